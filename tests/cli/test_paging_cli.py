"""`provisioner node events` and `provisioner audit` show a bounded page, or all with --all,
over a real sqlite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from provisioner.config import load_settings
from provisioner.inventory.events import EventLog
from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.security.audit import AuditLog
from provisioner.store import open_store
from provisioner.store.base import TxnOp
from tests.support.cli import Cli

MAC = MacAddress("52:54:00:00:09:01")


def _fill(cli: Cli, ops: list[TxnOp]) -> None:
    async def write() -> None:
        store = open_store(load_settings(env=cli.env))
        try:
            await store.txn(ops)
        finally:
            await store.close()

    asyncio.run(write())


def test_node_events_shows_the_newest_and_all_on_request(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli("node", "add", MAC.value, "--name", "node901")
    _fill(cli, [EventLog.event_op(BootEvent(MAC, "served", 1_800_000_000.0 + i, {"i": i}))
                for i in range(230)])
    shown = json.loads(cli("node", "events", "node901", "--json"))
    assert [r["detail"]["i"] for r in shown] == list(range(30, 230))  # the newest 200
    assert "older ones: --limit N or --all" in cli("node", "events", "node901")
    assert len(json.loads(cli("node", "events", "node901", "--json", "--all"))) == 230
    few = json.loads(cli("node", "events", "node901", "--json", "-n", "5"))
    assert [r["detail"]["i"] for r in few] == [225, 226, 227, 228, 229]


def test_audit_pages_through_a_long_log(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    ops = [AuditLog.op("local:ci", "node.update" if i % 2 else "auth", f"n{i}", "ok",
                       1_800_000_000.0 + i) for i in range(2500)]
    for at in range(0, len(ops), 1000):
        _fill(cli, ops[at:at + 1000])
    assert len(json.loads(cli("audit", "--json"))) == 50
    everything = json.loads(cli("audit", "--json", "--all"))
    assert len(everything) == 2500 and everything[0]["target"] == "n2499"
    updates = json.loads(cli("audit", "--json", "--action", "node.update", "-n", "1200"))
    assert len(updates) == 1200 and {e["action"] for e in updates} == {"node.update"}
    assert [e["target"] for e in updates[:2]] == ["n2499", "n2497"]
