"""The CLI on the host while a lab is up (no QEMU): with the lab's data dir, every command talks to
the lab's store, appliance and scheduler (from inside its namespace) without being told more;
`provisioner status` says so; `lab status` is aligned; after `lab down` the lab is not used."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli.target import resolve
from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from tests.support.cli import Cli

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]


@pytest.fixture
def lab_cli(tmp_path: Path) -> Iterator[tuple[Lab, Cli]]:
    namespace = f"pv-labc-{secrets.token_hex(3)}"
    cli = Cli(tmp_path, env={"PROVISIONER_LAB_NAMESPACE": namespace})
    lab = Lab.create(LabOptions(cli.data / "lab", namespace=namespace), say=print)
    try:
        yield lab, cli
    finally:
        lab.down(say=print)


def test_the_cli_on_the_host_talks_to_the_lab_that_is_up(lab_cli: tuple[Lab, Cli],
                                                         tmp_path: Path) -> None:
    lab, cli = lab_cli
    shown = cli.json("status")
    assert isinstance(shown, dict)
    assert shown["config"] == str(lab.state.config)
    assert shown["lab_namespace"] == lab.state.namespace
    assert shown["data_dir"] == str(cli.data / "lab" / "appliance")  # the lab's, not the env's
    assert shown["api"] == {"url": lab.state.api_url, "answers": True, "verdict": "answers",
                            "detail": "GET /healthz: HTTP 200"}
    assert shown["scheduler"]["url"] == lab.state.scheduler_url
    assert shown["scheduler"]["answers"] is True and shown["store"]["answers"] is True
    cli("node", "add", "52:54:00:99:00:07", "--name", "node007")
    listed = cli.json("node", "list")
    assert isinstance(listed, list) and [n["name"] for n in listed] == ["node007"]
    # the node is in the lab's store, as the lab's own processes read it
    inside = lab.cli("node", "list", "--json")
    assert [n["name"] for n in json.loads(inside.stdout)] == ["node007"]
    assert not (cli.data / "store.db").exists()  # no empty store beside the lab
    # the scheduler listens only inside the namespace, with a token: the CLI reaches it
    assert cli.json("scheduler", "jobs") == []
    assert cli("scheduler", "nodes").startswith("NAME")
    # a server started on the host is not the lab's: `serve` never takes the lab's settings
    env = {"PROVISIONER_DATA_DIR": str(cli.data)}
    assert resolve(None, env).namespace == lab.state.namespace
    assert resolve(None, env, serving=True).settings.data_dir == cli.data
    # -c with the lab's settings file is the same lab, whatever the data dir says
    other = Cli(tmp_path / "elsewhere")
    same = other.json("-c", str(lab.state.config), "node", "list")
    assert isinstance(same, list) and [n["name"] for n in same] == ["node007"]


def test_lab_status_is_aligned(lab_cli: tuple[Lab, Cli]) -> None:
    lab, cli = lab_cli
    fields = cli("lab", "status").split("\n\n")[0].splitlines()
    labels = [line.split(":", 1)[0] for line in fields]
    assert {"namespace", "api", "admin token", "scheduler", "scheduler token",
            "appliance process"} <= set(labels)
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in fields}
    assert len(columns) == 1, fields  # every value starts in the same column
    token = next(line for line in fields if line.startswith("scheduler token:"))
    assert token.split()[-1] == lab.state.scheduler_token


def test_after_lab_down_the_lab_is_not_used(lab_cli: tuple[Lab, Cli]) -> None:
    cli = lab_cli[1]
    cli("lab", "down")
    shown = cli.json("status")
    assert isinstance(shown, dict)
    assert shown["lab_namespace"] is None and shown["data_dir"] == str(cli.data)
    assert "no store at" in cli("node", "list", code=3)
