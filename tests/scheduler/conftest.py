"""A live scheduler on a free loopback port over a real sqlite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.scheduler.service import SchedulerServer
from provisioner.store.sqlite import SqliteStore


@pytest.fixture
async def sched(tmp_path: Path) -> AsyncIterator[SchedulerServer]:
    store = SqliteStore(tmp_path / "store.db")
    server = SchedulerServer(store, "127.0.0.1", 0, interval=0.05)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await store.close()
