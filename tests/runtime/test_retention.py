"""Retention on every backend: after a pass the store holds what `[retention]` allows and no
more: the newest events of each node, the newest audit entries, leases not long expired."""

from __future__ import annotations

import ipaddress
import json

from provisioner.config_retention import RetentionSettings
from provisioner.inventory import codec, keys
from provisioner.inventory.events import EventLog
from provisioner.inventory.leases import stale_leases
from provisioner.nodes.model import BootEvent, Lease, MacAddress
from provisioner.nodes.progress import RolloutStatus
from provisioner.runtime.retention import DAY, Retention
from provisioner.security.audit import AuditLog
from provisioner.store.base import KeyValueStore, TxnOp

NOW = 1_800_000_000.0
BUSY, QUIET, GONE = (MacAddress(f"52:54:00:00:07:0{i}") for i in range(3))


class _Events(EventLog):
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store


async def _write(store: KeyValueStore, ops: list[TxnOp]) -> None:
    for at in range(0, len(ops), 100):  # etcd's --max-txn-ops is 128
        await store.txn(ops[at:at + 100])


async def _events(store: KeyValueStore, mac: MacAddress, count: int, start: float) -> None:
    await _write(store, [EventLog.event_op(BootEvent(mac, "served", start + i, {"i": i}))
                         for i in range(count)])


async def _count(store: KeyValueStore, prefix: str) -> int:
    return len((await store.range(prefix)).items)


def _settings(**changes: float) -> RetentionSettings:
    base = {"events_per_node": 50, "events_days": 30.0, "audit_records": 120,
            "audit_days": 365.0, "leases_days": 7.0, "batch": 40}
    return RetentionSettings(**{**base, **changes})  # type: ignore[arg-type]


async def test_a_pass_brings_events_and_audit_back_to_their_bounds(
        store: KeyValueStore) -> None:
    await _events(store, BUSY, 230, NOW - 3600)  # over the count: the newest 50 stay
    await _events(store, QUIET, 20, NOW - 40 * DAY)  # all older than 30 days
    await _events(store, QUIET, 5, NOW - 60)
    await _events(store, GONE, 3, NOW - 120)
    await _write(store, [AuditLog.op("local:root", "node.update", f"n{i}", "ok", NOW - 500 + i)
                         for i in range(300)])
    retention = Retention(store, _settings(), clock=lambda: NOW)

    trimmed = await retention.trim()

    assert (trimmed.events, trimmed.audit) == (180 + 20, 180)
    events = _Events(store)
    busy, _ = await events.events_page(BUSY, limit=1000)
    assert [e.detail["i"] for e in busy] == list(range(180, 230))  # the newest, in order
    assert len((await events.events_page(QUIET, limit=1000))[0]) == 5
    assert len((await events.events_page(GONE, limit=1000))[0]) == 3
    assert await _count(store, keys.EVENTS) == 58
    newest, _ = await AuditLog(store).page(limit=1000)
    assert len(newest) == 120 and newest[0].target == "n299" and newest[-1].target == "n180"
    assert await retention.trim() == type(trimmed)(0, 0, 0, 0)  # a second pass finds nothing


async def test_old_audit_entries_go_whatever_their_count(store: KeyValueStore) -> None:
    await _write(store, [AuditLog.op("anonymous", "auth", "GET /", "denied", NOW - d * DAY)
                         for d in (400, 366, 364, 1)])
    trimmed = await Retention(store, _settings(), clock=lambda: NOW).trim()
    assert trimmed.audit == 2
    assert [e.at for e in await AuditLog(store).entries()] == [NOW - DAY, NOW - 364 * DAY]


async def test_leases_expired_long_ago_are_deleted_and_the_rest_stay(
        store: KeyValueStore) -> None:
    def lease(last: int, expires: float) -> TxnOp:
        ip = ipaddress.IPv4Address(f"10.0.0.{last}")
        record = Lease(ip, MacAddress(f"52:54:00:00:08:{last:02x}"), expires)
        return TxnOp(keys.lease(ip), codec.encode_lease(record))

    await _write(store, [lease(1, NOW - 30 * DAY), lease(2, NOW - 8 * DAY),
                         lease(3, NOW - 6 * DAY), lease(4, NOW + 3600)])
    trimmed = await Retention(store, _settings(), clock=lambda: NOW).trim()
    assert trimmed.leases == 2
    left = sorted(kv.key for kv in (await store.range(keys.LEASES)).items)
    assert left == [keys.lease("10.0.0.3"), keys.lease("10.0.0.4")]


async def test_a_lease_renewed_during_the_pass_is_kept(store: KeyValueStore) -> None:
    """The delete expects the revision it read: a renewal in between wins."""
    ip = ipaddress.IPv4Address("10.0.0.9")
    old = Lease(ip, MacAddress("52:54:00:00:08:09"), NOW - 30 * DAY)
    await store.put(keys.lease(ip), codec.encode_lease(old))
    retention = Retention(store, _settings(), clock=lambda: NOW)
    ops = [op async for op in stale_leases(store, before=NOW - 7 * DAY)]
    renewed = Lease(ip, old.mac, NOW + 3600)
    await store.put(keys.lease(ip), codec.encode_lease(renewed))
    assert await retention._delete_batch(ops) == 0
    kv = await store.get(keys.lease(ip))
    assert kv is not None and codec.decode_lease(kv.value).expires == NOW + 3600



async def test_finished_rollouts_past_retention_go_and_running_ones_stay(
        store: KeyValueStore) -> None:
    def rollout(name: str, state: str, finished_days_ago: float | None) -> TxnOp:
        finished = None if finished_days_ago is None else NOW - finished_days_ago * DAY
        status = RolloutStatus(id=name, image="compute", version=None, wave=1, max_failures=1,
                               force=False, started=NOW - 400 * DAY, state=state,
                               finished=finished)
        return TxnOp(keys.reimage(name), json.dumps(status.to_dict()).encode())

    await _write(store, [rollout("r1-old", "succeeded", 400), rollout("r2", "failed", 30),
                         rollout("r3", "stopped", 20), rollout("r4", "succeeded", 10),
                         rollout("r5-running", "running", None)])
    settings = _settings(rollouts_kept=2, rollouts_days=365.0)
    trimmed = await Retention(store, settings, clock=lambda: NOW).trim()
    assert trimmed.rollouts == 2  # r1 by age, r2 beyond the newest two finished
    left = sorted(kv.key for kv in (await store.range(keys.REIMAGE)).items)
    assert left == [keys.reimage(n) for n in ("r3", "r4", "r5-running")]
