"""A flood of refused requests writes a bounded number of audit entries: the first from a
source at once, the rest as one summary when the minute ends."""

from __future__ import annotations

import pytest

from provisioner.security.audit import AuditLog
from provisioner.security.refusals import MAX_FIRSTS, WINDOW, RefusalRecorder
from provisioner.store.memory import MemoryStore


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _writes(store: MemoryStore) -> int:
    return (await store.status()).revision


async def test_a_flood_from_one_source_is_one_entry_and_one_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    store, clock = MemoryStore(), _Clock()
    audit = AuditLog(store)
    recorder = RefusalRecorder(audit, clock)
    for _ in range(5000):
        await recorder.refuse("192.0.2.7", "client:192.0.2.7", "auth", "GET /api/v1/nodes",
                              "bad bearer token")
        clock.now += 0.001
    assert await _writes(store) == 1 and recorder.total == 5000
    assert caplog.text.count("from 192.0.2.7") == 1  # one log line, with the address
    clock.now += WINDOW
    await recorder.flush()
    entries = await audit.entries()
    assert [e.detail.get("refused", 1) for e in entries] == [4999, 1]
    assert entries[0].detail["source"] == "192.0.2.7"
    assert entries[0].detail["reason"] == "bad bearer token"
    await recorder.refuse("192.0.2.7", "client:192.0.2.7", "auth", "GET /", "bad bearer token")
    assert await _writes(store) == 3  # a new window: its first is recorded again
    await recorder.close()


async def test_each_reason_has_its_own_window() -> None:
    store, clock = MemoryStore(), _Clock()
    recorder = RefusalRecorder(AuditLog(store), clock)
    for reason in ("no bearer token", "bad bearer token", "no bearer token"):
        await recorder.refuse("192.0.2.7", "client:192.0.2.7", "auth", "GET /", reason)
    assert await _writes(store) == 2
    await recorder.close()
    assert await _writes(store) == 3  # closing records what was only counted


async def test_many_sources_share_one_window_past_the_cap() -> None:
    store, clock = MemoryStore(), _Clock()
    audit = AuditLog(store)
    recorder = RefusalRecorder(audit, clock)
    for i in range(MAX_FIRSTS + 500):
        source = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        await recorder.refuse(source, f"client:{source}", "auth", "GET /", "no bearer token")
        clock.now += 0.001
    assert await _writes(store) == MAX_FIRSTS + 1  # then one for "many sources"
    await recorder.close()
    summary = (await audit.entries(limit=1))[0]
    assert summary.who == "client:many sources" and summary.detail["refused"] == 499
