"""`provisioner node accept NODE...`: discovered nodes become registered; anything else is a
one-line error with a non-zero exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from provisioner.config import load_settings
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.store import open_store
from tests.support.cli import Cli


async def _discover(cli: Cli, nodes: list[tuple[str, str]]) -> None:
    """Store nodes as DHCP discovery does: no lifecycle move leads to `discovered`."""
    store = open_store(load_settings(env=cli.env))
    try:
        for mac, name in nodes:
            await Inventory(store).add_node(Node(MacAddress(mac), name,
                                                 state=NodeState.DISCOVERED))
    finally:
        await store.close()


def test_accept_moves_discovered_nodes_to_registered(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    asyncio.run(_discover(cli, [("52:54:00:00:00:31", "node031"),
                                ("52:54:00:00:00:32", "node032")]))
    out = cli("node", "accept", "node031", "52-54-00-00-00-32")
    assert out.splitlines() == [
        "accepted node node031 (52:54:00:00:00:31): it boots from its next script",
        "accepted node node032 (52:54:00:00:00:32): it boots from its next script"]
    shown = cli.json("node", "show", "node031")
    assert isinstance(shown, dict) and shown["state"] == "registered"
    events = cli.json("node", "events", "node032")
    assert isinstance(events, list)
    assert events[-1]["kind"] == "registered" and events[-1]["detail"]["from"] == "discovered"
    assert events[-1]["detail"]["reason"].startswith("accepted by local:")
    audited = cli.json("audit", "--action", "node.accept")
    assert isinstance(audited, list)
    assert sorted(e["target"] for e in audited) == ["52:54:00:00:00:31", "52:54:00:00:00:32"]
    error = cli("node", "accept", "node031", code=5)
    assert "node node031 is registered: it cannot go to registered" in error
    missing = cli("node", "accept", "ghost", code=4)
    assert "ghost" in missing
