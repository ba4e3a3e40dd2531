"""Publishing an image does not move `current` unless asked (--activate); pruning, by hand or
after a publish ([images] keep), never deletes the current version nor one a node, a group or
the defaults pin with image=NAME:VERSION, and says which it kept and why."""

from __future__ import annotations

import lzma
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.cli.main import app
from provisioner.images.format.catalog import ImageCatalog
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings, open_api, publish_image
from tests.support.cli import Cli


def _pair(tmp_path: Path) -> list[str]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.xz"
    kernel.write_bytes(b"not a kernel")
    initrd.write_bytes(lzma.compress(b"x", check=lzma.CHECK_CRC32))
    return ["--kernel", str(kernel), "--initrd", str(initrd)]


def _versions(cli: Cli) -> list[tuple[str, bool]]:
    found = cli.json("image", "list")
    assert isinstance(found, list)
    return [(i["version"], i["current"]) for i in found]


def test_publish_activates_only_when_asked(tmp_path: Path) -> None:
    cli, pair = Cli(tmp_path), _pair(tmp_path)
    assert cli("image", "import", "img", *pair) == "imported img:1; it is current\n"
    said = cli("image", "import", "img", *pair)
    assert said.startswith("imported img:2; current is still img:1")
    assert _versions(cli) == [("1", True), ("2", False)]
    assert cli("image", "prune", "img") == "img: nothing to prune\n"
    assert cli("image", "import", "img", *pair, "--activate") == \
        "imported img:3; it is current\n"
    assert _versions(cli) == [("1", False), ("2", False), ("3", True)]
    publishes = cli.json("audit", "--action", "image.publish")
    assert isinstance(publishes, list)
    assert [e["detail"]["activate"] for e in reversed(publishes)] == [False, False, True]


def test_prune_after_publish_keeps_pinned_and_current(tmp_path: Path) -> None:
    cli = Cli(tmp_path, env={"PROVISIONER_IMAGES_KEEP": "1"})
    pair = _pair(tmp_path)
    cli("image", "import", "img", *pair)  # 1, current
    cli("image", "import", "img", *pair)  # 2
    cli("node", "add", "52:54:00:00:60:01", "--name", "n1", "--image", "img:2")
    cli("group", "add", "gpu", "--set", "image=img:3")
    cli("image", "import", "img", *pair)  # 3: 2 is pinned by n1 now
    cli("image", "import", "img", *pair)  # 4: 3 is pinned by the group
    result = cli.runner.invoke(app, ["image", "import", "img", *pair], env=cli.env)
    assert result.exit_code == 0, result.stderr  # 5: prunes 4, keeps 1, 2, 3
    assert "pruned img:4" in result.stderr
    assert "kept img:1: current" in result.stderr
    assert "kept img:2: pinned by node n1" in result.stderr
    assert "kept img:3: pinned by group gpu" in result.stderr
    assert [v for v, _ in _versions(cli)] == ["1", "2", "3", "5"]


def test_prune_by_hand_says_what_it_kept_and_why(tmp_path: Path) -> None:
    cli = Cli(tmp_path, env={"PROVISIONER_IMAGES_KEEP": "5"})
    pair = _pair(tmp_path)
    for _ in range(4):
        cli("image", "import", "img", *pair)
    cli("image", "set-current", "img", "2")
    cli("node", "add", "52:54:00:00:60:01", "--name", "n1", "--set", "image=img:1")
    cli.env["PROVISIONER_IMAGES_KEEP"] = "1"
    out = cli("image", "prune").splitlines()
    assert out == ["pruned img:3", "kept img:1: pinned by node n1", "kept img:2: current"]
    assert [v for v, _ in _versions(cli)] == ["1", "2", "4"]
    again = cli("image", "prune", "img")
    assert "pruned" not in again and "kept img:1: pinned by node n1" in again
    cli("node", "delete", "n1")
    assert cli.json("image", "prune") == [{"name": "img", "pruned": ["1"],
                                           "kept": {"2": "current"}}]
    entries = cli.json("audit", "--action", "image.prune")
    assert isinstance(entries, list) and entries[0]["detail"]["pruned"] == ["1"]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    found, inventory = await open_api(MemoryStore(),
                                      api_settings(tmp_path, PROVISIONER_IMAGES_KEEP="1"))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


async def test_api_prune_keeps_pinned_and_current(api: Api) -> None:
    roomy = ImageCatalog(api.ctx.catalog.root, keep=10)
    for _ in range(4):
        publish_image(roomy, "img")  # 4 is current
    made = await api.client.post("/api/v1/nodes", headers=api.operator, json={
        "mac": "52:54:00:00:60:01", "name": "n1", "image": "img:2"})
    assert made.status_code == 201, made.text
    refused = await api.client.post("/api/v1/images/img/prune", headers=api.operator)
    assert refused.status_code == 403
    pruned = await api.client.post("/api/v1/images/img/prune", headers=api.admin)
    assert pruned.status_code == 200, pruned.text
    assert pruned.json() == {"name": "img", "pruned": ["1", "3"],
                             "kept": {"2": "pinned by node n1"}}
    listed = (await api.client.get("/api/v1/images/img", headers=api.viewer)).json()
    assert [v["version"] for v in listed["versions"]] == ["2", "4"]
    assert (await api.ctx.audit.entries(action="image.prune"))[0].outcome == "ok"
