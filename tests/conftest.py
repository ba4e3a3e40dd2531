"""Shared fixtures: a `store` fixture that runs the contract suite against every backend.

The etcd backend runs against a real etcd server (Debian's etcd-server) that `etcd_server`
starts on free loopback ports; it is never skipped silently: without the etcd binary the etcd
tests fail, and CI installs it (scripts/setup.sh).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from provisioner.scheduler.service import SchedulerServer
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore
from provisioner.store.sqlite import SqliteStore
from tests.support.etcd_server import EtcdServer

pytest_plugins = ["tests.support.kernel", "tests.support.labs"]

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `full` are the full-size runs (thousands of simulated nodes, long
    failovers): they run only with PROVISIONER_FULL=1, so CI keeps to its budget."""
    if os.environ.get("PROVISIONER_FULL"):
        return
    skip = pytest.mark.skip(reason="the full-size run: set PROVISIONER_FULL=1")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


BACKENDS = ["memory", "sqlite", pytest.param("etcd", marks=pytest.mark.etcd)]


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyValueStore]:
    backend: KeyValueStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "store.db")
    else:
        from provisioner.store.etcd import EtcdStore

        server: EtcdServer = request.getfixturevalue("etcd_server")
        backend = EtcdStore([server.endpoint], namespace=f"/test-{uuid.uuid4().hex[:8]}")
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def sched(tmp_path: Path) -> AsyncIterator[SchedulerServer]:
    """A live scheduler on a free loopback port over a real sqlite store (tests/scheduler and
    the builtin handoff's tests)."""
    store = SqliteStore(tmp_path / "store.db")
    server = SchedulerServer(store, "127.0.0.1", 0, interval=0.05)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await store.close()
