"""`provisioner token ...` and `provisioner node events` over a real sqlite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from provisioner.config import load_settings
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import MacAddress
from provisioner.security.tokens import ApiTokens, Role
from provisioner.store import open_store
from tests.support.cli import Cli


def test_create_prints_the_token_once_and_it_authenticates(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    token = cli("token", "create", "--role", "operator", "--name", "ci").strip()
    assert "." in token and len(token) > 40
    listed = json.loads(cli("token", "list", "--json"))
    assert [(t["name"], t["role"]) for t in listed] == [("ci", "operator")]
    assert token.split(".")[1] not in cli("token", "list")

    async def check() -> Role:
        store = open_store(load_settings(env=cli.env))
        try:
            return (await ApiTokens(store).authenticate(token)).role
        finally:
            await store.close()

    assert asyncio.run(check()) is Role.OPERATOR
    assert "revoked token" in cli("token", "revoke", listed[0]["id"])
    assert "no token" in cli("token", "revoke", listed[0]["id"], code=4)
    assert "viewer, operator, admin" in cli("token", "create", "--role", "root", code=2)


def test_node_events_show_the_time_in_each_state(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli("node", "add", "52:54:00:00:00:01", "--name", "node001")
    now = [1_800_000_000.0]

    async def boot() -> None:
        store = open_store(load_settings(env=cli.env))
        try:
            life = Lifecycle(Inventory(store), None, lambda: now[0])
            await life.boot_script_served(MacAddress("52:54:00:00:00:01"), "compute", "1")
            now[0] += 75.25
            await life.booted(MacAddress("52:54:00:00:00:01"), {"cpus": 2}, "1")
        finally:
            await store.close()

    asyncio.run(boot())
    table = cli("node", "events", "node001").splitlines()
    assert table[0] == "node001 (52:54:00:00:00:01) is ready"
    assert table[1].split() == ["TIME", "OFFSET", "EVENT", "IN", "STATE", "DETAIL"]
    provisioning = next(line for line in table if " provisioning " in line)
    assert "1m15s" in provisioning and "+0.000s" in provisioning
    assert "+75.250s" in next(line for line in table if " booted " in line)
    rows = json.loads(cli("node", "events", "node001", "--json"))
    assert [r["kind"] for r in rows] == ["provisioning", "booted", "ready"]
    assert rows[0]["duration"] == 75.25
    assert "no node" in cli("node", "events", "nope", code=4)
