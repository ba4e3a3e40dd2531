"""Compaction of the store's history (etcd's, in `serve`), held back to what this process's
followers have applied: the history goes, the followers carry on without a relist."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.config_retention import RetentionSettings
from provisioner.inventory.follower import Follower
from provisioner.runtime import supervisor
from provisioner.runtime.retention import Retention
from provisioner.runtime.supervisor import Supervisor
from provisioner.service import Appliance
from provisioner.store.base import Compacted, EventType, KeyValueStore, TxnOp, WatchEvent
from tests.support.etcd_server import EtcdServer

KEEP = 10


@pytest.fixture
async def ambient() -> AsyncIterator[Supervisor]:
    sup = Supervisor(first_delay=30.0)  # a failed follower stays down for the whole test
    undo = supervisor.install(sup)
    try:
        yield sup
    finally:
        await sup.close()
        undo()


def _viewer(view: dict[str, bytes], poison: str = "") -> Callable[[WatchEvent], None]:
    def apply(event: WatchEvent) -> None:
        if event.key == poison:
            raise ValueError(f"cannot apply {poison}")
        if event.type is EventType.DELETE:
            view.pop(event.key, None)
        else:
            view[event.key] = event.value
    return apply


async def _busy(store: KeyValueStore, count: int) -> int:
    revisions = [await store.put(f"/busy/k{i % 7}", str(i).encode()) for i in range(count)]
    return revisions[-1]


async def _first(store: KeyValueStore, prefix: str, start: int) -> WatchEvent:
    """The first event of a watch, which is then closed."""
    watch = store.watch(prefix, start)
    try:
        return await anext(watch)
    finally:
        if isinstance(watch, AsyncGenerator):
            await watch.aclose()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_compaction_keeps_the_newest_revisions_and_followers_carry_on(
        store: KeyValueStore, ambient: Supervisor) -> None:
    await store.txn([TxnOp("/quiet/a", b"1"), TxnOp("/quiet/b", b"2")])
    quiet_view: dict[str, bytes] = {}
    busy_view: dict[str, bytes] = {}
    quiet = Follower(store, "/quiet/", _viewer(quiet_view))
    busy = Follower(store, "/busy/", _viewer(busy_view))
    await quiet.start()
    await busy.start()
    try:
        head = await _busy(store, 60)
        await _until(lambda: busy.applied >= head)
        retention = Retention(store, RetentionSettings(compact_keep=KEEP))

        compacted = await retention.compact()

        # The quiet follower saw no event since it started; its view matched the store, so
        # it was moved up rather than holding the compaction back.
        assert compacted == head - KEEP
        assert quiet.applied + 1 >= compacted
        with pytest.raises(Compacted):
            await _first(store, "/busy/", compacted - 1)
        assert await retention.compact() is None  # nothing new: nothing to do
        later = await store.put("/quiet/c", b"3")
        await _until(lambda: quiet.applied >= later and busy.applied >= head)
        assert quiet_view == {"/quiet/a": b"1", "/quiet/b": b"2", "/quiet/c": b"3"}
        assert (quiet.relists, busy.relists) == (0, 0)
    finally:
        await quiet.stop()
        await busy.stop()


async def test_a_follower_that_is_behind_holds_the_compaction_back(
        store: KeyValueStore, ambient: Supervisor) -> None:
    """A follower that failed on an event (its supervisor restarts it later) resumes from the
    revision after the last one it applied: the compaction stops there."""
    view: dict[str, bytes] = {}
    stuck = Follower(store, "/busy/", _viewer(view, poison="/busy/k3"))
    await stuck.start()
    try:
        head = await _busy(store, 60)
        await _until(lambda: bool(ambient.down()))
        assert stuck.applied < head - KEEP
        compacted = await Retention(store, RetentionSettings(compact_keep=KEEP)).compact()
        assert compacted is None or compacted <= stuck.applied + 1
        first = await _first(store, "/busy/", stuck.applied + 1)  # not Compacted: it carries on
        assert first.key == "/busy/k3"
    finally:
        await stuck.stop()


@pytest.mark.etcd
async def test_the_appliance_over_etcd_compacts_on_its_schedule(
        etcd_server: EtcdServer, tmp_path: Path) -> None:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "etcd",
        "PROVISIONER_STORE_ENDPOINTS": etcd_server.endpoint,
        "PROVISIONER_STORE_NAMESPACE": f"/test-{uuid.uuid4().hex[:8]}",
        "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_BOOT_LISTEN": "127.0.0.1",
        "PROVISIONER_BOOT_PORT": "0", "PROVISIONER_HANDOFF_KIND": "none",
        "PROVISIONER_RETENTION_COMPACT_INTERVAL": "0.2",
        "PROVISIONER_RETENTION_COMPACT_KEEP": "5"})
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        names = {state.name for state in appliance.supervisor.states()}
        assert {"retention", "etcd compaction"} <= names
        head = await _busy(appliance.store, 30)
        async with asyncio.timeout(10):
            while True:  # the compaction's own revision is not known here: watch for it
                try:
                    await _first(appliance.store, "/", head - 10)
                except Compacted:
                    break
                await asyncio.sleep(0.1)
        assert appliance.inventory.node_by_name("nobody") is None  # the cache still answers
