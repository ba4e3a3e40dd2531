"""Changes made with the CLI on the head node (it opens the store directly, past the API) are
audited as API changes are: the API's action names, the target, the outcome, and who as
`local:USER` from the real uid."""

from __future__ import annotations

import lzma
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli

MAC = "52:54:00:00:20:01"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _entries(cli: Cli) -> list[dict[str, Any]]:
    found = cli.json("audit", "--limit", "1000")
    assert isinstance(found, list)
    return list(reversed(found))  # oldest first, as the changes were made


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.xz"
    kernel.write_bytes(b"not a kernel")
    initrd.write_bytes(lzma.compress(b"x", check=lzma.CHECK_CRC32))
    return kernel, initrd


def test_every_cli_change_is_audited_as_local_user(cli: Cli, tmp_path: Path) -> None:
    kernel, initrd = _pair(tmp_path)
    cli("group", "add", "compute", "--set", "console=ttyS0,115200")
    cli("group", "set", "compute", "--set", "kernel_args=quiet")
    cli("node", "add", MAC, "--name", "n1", "-g", "compute")
    cli("node", "set", "n1", "--set", "power_driver=manual", "--state", "provisioning")
    cli("node", "power", "n1", "cycle")
    cli("node", "power", "n1", "status")  # a read: not audited, as in the API
    token = cli.json("token", "create", "--role", "viewer")
    assert isinstance(token, dict)
    cli("token", "revoke", token["id"])
    for _ in range(3):
        cli("image", "import", "img", "--kernel", str(kernel), "--initrd", str(initrd))
    cli("image", "set-current", "img", "2")
    cli("image", "prune", "img")
    cli("image", "delete", "img:3")
    cli("node", "delete", "n1")
    cli("group", "delete", "compute")

    entries = _entries(cli)
    me = f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    assert {e["who"] for e in entries} == {me}
    assert {e["outcome"] for e in entries} == {"ok"}
    assert [(e["action"], e["target"]) for e in entries] == [
        ("group.create", "compute"), ("group.update", "compute"),
        ("node.create", MAC), ("node.update", MAC), ("power.cycle", MAC),
        ("token.create", token["id"]), ("token.revoke", token["id"]),
        ("image.publish", "img:1"), ("image.publish", "img:2"), ("image.publish", "img:3"),
        ("image.set_current", "img:2"), ("image.prune", "img"), ("image.delete", "img:3"),
        ("node.delete", MAC), ("group.delete", "compute")]
    update = entries[3]["detail"]
    assert update["fields"] == ["settings", "state"]
    table = cli("audit", "--action", "node.update").splitlines()
    assert table[0].split() == ["TIME", "WHO", "ACTION", "TARGET", "OUTCOME", "DETAIL"]
    assert len(table) == 2 and me in table[1] and MAC in table[1]


def test_a_refused_cli_change_is_audited_as_failed(cli: Cli) -> None:
    cli("node", "add", MAC, "--name", "n1")
    line = cli("node", "set", "n1", "--state", "ready", code=5)
    assert line.startswith("error: node n1 is registered: it cannot go to ready")
    cli("group", "delete", "nosuch", code=4)
    failed = [e for e in _entries(cli) if e["outcome"] == "failed"]
    assert [(e["action"], e["target"]) for e in failed] == [("node.update", MAC),
                                                             ("group.delete", "nosuch")]
    assert "cannot go to ready" in failed[0]["detail"]["error"]


def test_who_ignores_the_environment(cli: Cli) -> None:
    """$USER and $LOGNAME are the caller's to choose; the uid is not."""
    cli.env |= {"USER": "root", "LOGNAME": "root"}
    cli("group", "add", "compute")
    (entry,) = _entries(cli)
    assert entry["who"] == f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    if os.getuid() != 0:
        assert entry["who"] != "local:root"
