"""`provisioner node set --state` moves a node the way the API does: through the one row of
the lifecycle table between the two states, recorded on its timeline; an illegal move is
refused, in one line naming the states the node can go to, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.nodes.lifecycle import allowed
from provisioner.nodes.model import NodeState
from tests.support.cli import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    cli("node", "add", "52:54:00:00:30:01", "--name", "n1")
    return cli


def _state(cli: Cli) -> str:
    shown = cli.json("node", "show", "n1")
    assert isinstance(shown, dict)
    return str(shown["state"])


def test_legal_moves_follow_the_table_and_are_on_the_timeline(cli: Cli) -> None:
    for step in ("provisioning", "booted", "ready", "draining", "retired", "registered"):
        cli("node", "set", "n1", "--state", step)
        assert _state(cli) == step
    timeline = cli.json("node", "events", "n1")
    assert isinstance(timeline, list)
    moves = [(e["kind"], e["detail"]["event"]) for e in timeline]
    assert moves == [("provisioning", "boot_script_served"), ("booted", "callback"),
                     ("ready", "handed_off"), ("draining", "drain"), ("retired", "retire"),
                     ("registered", "register")]
    assert all(e["detail"]["reason"].startswith("set by local:") for e in timeline)


def test_an_illegal_move_is_one_line_listing_the_legal_ones(cli: Cli) -> None:
    legal = ", ".join(allowed(NodeState.REGISTERED))
    line = cli("node", "set", "n1", "--state", "ready", "--name", "n2", code=5)
    assert line == (f"error: node n1 is registered: it cannot go to ready; from registered "
                    f"it can go to: {legal}")
    assert _state(cli) == "registered"
    assert cli("node", "show", "n2", code=4)  # the name did not change either
    assert cli.json("node", "events", "n1") == []
