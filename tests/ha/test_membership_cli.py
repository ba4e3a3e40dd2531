"""`provisioner heads` on a real etcd: the live heads with their share of the 256 buckets
(shares that add up to the whole) and their addresses; a head that leaves is no longer listed;
with no head, it says so; the head that leads the once-only work shows it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from provisioner.cli.heads import head_rows
from provisioner.ha.election import Election
from provisioner.ha.membership import Membership
from provisioner.ha.records import HeadRecord
from provisioner.nodes.rollout import owner_id
from provisioner.store.etcd import EtcdStore
from tests.ha.heads import namespace
from tests.support.cli import Cli
from tests.support.etcd_server import EtcdServer


def test_a_column_shows_what_each_head_holds_once_any_does() -> None:
    heads = [HeadRecord("a", since=90.0), HeadRecord("b")]
    assert all("holds" not in row for row in head_rows(heads, 100.0))
    rows = head_rows(heads, 100.0, {"a": ["retention", "handoff"]})
    assert [r["holds"] for r in rows] == [["handoff", "retention"], []]
    assert [r["up_seconds"] for r in rows] == [10, None]


@pytest.mark.etcd
async def test_heads_lists_the_live_heads_and_their_shares(
        etcd_server: EtcdServer, tmp_path: Path) -> None:
    space = namespace()
    cli = Cli(tmp_path, env={"PROVISIONER_STORE_BACKEND": "etcd",
                             "PROVISIONER_STORE_ENDPOINTS": etcd_server.endpoint,
                             "PROVISIONER_STORE_NAMESPACE": space})
    store = EtcdStore([etcd_server.endpoint], namespace=space)
    members = [Membership(store, HeadRecord(f"head-{i}", f"10.0.0.{i}", f"http://10.0.0.{i}",
                                            f"http://10.0.0.{i}:8080", time.time()), 3.0)
               for i in (1, 2)]
    try:
        assert "no live head" in await asyncio.to_thread(cli, "heads")
        for member in members:
            await member.start()
        rows = await asyncio.to_thread(cli.json, "heads")
        assert isinstance(rows, list)
        assert [r["name"] for r in rows] == ["head-1", "head-2"]
        assert sum(r["buckets"] for r in rows) == 256 and all(r["buckets"] > 0 for r in rows)
        assert rows[0]["server_id"] == "10.0.0.1" and rows[1]["api_url"] == "http://10.0.0.2:8080"
        assert "holds" not in rows[0]  # nothing held: no column
        table = await asyncio.to_thread(cli, "heads")
        assert table.splitlines()[0].split()[:3] == ["NAME", "BUCKETS", "SHARE"]
        assert "http://10.0.0.2" in table and "%" in table
        election = Election(store, "singletons", owner_id("head-2"), ttl=3.0)
        term = await asyncio.wait_for(election.campaign(), 10)
        rows = await asyncio.to_thread(cli.json, "heads")
        assert isinstance(rows, list)
        assert [r["holds"] for r in rows] == [[], ["singletons"]]  # who leads the once-only work
        assert "singletons" in await asyncio.to_thread(cli, "heads")
        await election.resign(term)
        await members[1].stop()
        rows = await asyncio.to_thread(cli.json, "heads")
        assert isinstance(rows, list)
        assert [(r["name"], r["buckets"], r["share"]) for r in rows] == [("head-1", 256, 100.0)]
        assert "holds" not in rows[0]
    finally:
        for member in members:
            await member.stop()
        await store.close()
