"""`two_stores`: two clients of one store (two sqlite connections to one file, two etcd clients
in one namespace), as two appliances on two head nodes, or an appliance and the CLI, have.
Import the fixture into a test module to use it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.store.base import KeyValueStore
from provisioner.store.sqlite import SqliteStore
from tests.support.etcd_server import EtcdServer


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def two_stores(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[tuple[KeyValueStore, KeyValueStore]]:
    stores: list[KeyValueStore]
    if request.param == "sqlite":
        stores = [SqliteStore(tmp_path / "store.db"), SqliteStore(tmp_path / "store.db")]
    else:
        from provisioner.store.etcd import EtcdStore

        server: EtcdServer = request.getfixturevalue("etcd_server")
        namespace = f"/test-{uuid.uuid4().hex[:8]}"
        stores = [EtcdStore([server.endpoint], namespace=namespace) for _ in range(2)]
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()
