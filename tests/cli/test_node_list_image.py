"""`provisioner node list --image`: NAME selects every version, NAME:VERSION only that one."""

from __future__ import annotations

from pathlib import Path

from tests.image_filter import FILTERS, NODES, wanted
from tests.support.cli import Cli


def test_node_list_image_selects_a_name_or_one_version(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    for mac, name, image in NODES:
        cli("node", "add", mac, "--name", name, *(["--image", image] if image else []))
    for image in FILTERS:
        listed = cli.json("node", "list", "--image", image)
        assert isinstance(listed, list)
        assert [n["name"] for n in listed] == wanted(image), image
        table = cli("node", "list", "--image", image).splitlines()[1:]
        assert sorted(line.split()[0] for line in table) == wanted(image), image
