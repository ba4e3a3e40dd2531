"""`provisioner node accept NODE...`: discovered nodes become registered; anything else is a
one-line error with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import Cli


def test_accept_moves_discovered_nodes_to_registered(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    for mac, name in (("52:54:00:00:00:31", "node031"), ("52:54:00:00:00:32", "node032")):
        cli("node", "add", mac, "--name", name)
        cli("node", "set", name, "--state", "discovered")
    out = cli("node", "accept", "node031", "52-54-00-00-00-32")
    assert out.splitlines() == [
        "accepted node node031 (52:54:00:00:00:31): it boots from its next script",
        "accepted node node032 (52:54:00:00:00:32): it boots from its next script"]
    shown = cli.json("node", "show", "node031")
    assert isinstance(shown, dict) and shown["state"] == "registered"
    events = cli.json("node", "events", "node032")
    assert isinstance(events, list)
    assert events[-1]["kind"] == "registered" and events[-1]["detail"]["from"] == "discovered"
    assert events[-1]["detail"]["reason"].startswith("accepted by cli:")
    error = cli("node", "accept", "node031", code=5)
    assert "node node031 is registered: it cannot go to registered" in error
    missing = cli("node", "accept", "ghost", code=4)
    assert "ghost" in missing
