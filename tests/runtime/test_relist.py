"""A follower whose history was compacted, or that was restarted after a fault, reads its prefix
again and carries on: the view ends up as the store is, and later changes keep arriving."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import pytest

from provisioner.inventory.follower import Follower
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress, Node
from provisioner.runtime import supervisor
from provisioner.runtime.supervisor import Supervisor, TaskStatus
from provisioner.store.base import EventType, KeyValueStore, WatchEvent
from provisioner.store.etcd import EtcdStore
from tests.runtime.proxy import TcpProxy
from tests.support.etcd_server import EtcdServer

MAC = [MacAddress(f"52:54:00:00:01:0{i}") for i in range(4)]


async def _until(condition: Callable[[], bool], timeout: float) -> float:
    """Wait for `condition` (polling); return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)
    return loop.time() - started


async def test_a_restart_after_a_fault_relists_across_a_compaction(
        store: KeyValueStore, caplog: pytest.LogCaptureFixture) -> None:
    view: dict[str, bytes] = {}
    faults: list[str] = []

    def apply(event: WatchEvent) -> None:
        if event.key == "/t/poison" and not faults:
            faults.append(event.key)
            raise ValueError("cannot apply /t/poison")
        if event.type is EventType.DELETE:
            view.pop(event.key, None)
        else:
            view[event.key] = event.value

    await store.put("/t/a", b"1")
    await store.put("/t/b", b"1")
    sup = Supervisor(first_delay=0.5)
    undo = supervisor.install(sup)
    follower = Follower(store, "/t/", apply)
    try:
        await follower.start()
        assert view == {"/t/a": b"1", "/t/b": b"1"}
        await store.put("/t/poison", b"x")
        await _until(lambda: bool(sup.down()), 5)
        # While the follower waits out its backoff: changes, then history dropped under them.
        await store.delete("/t/a")
        await store.put("/t/b", b"2")
        revision = await store.put("/t/c", b"3")
        await store.compact(revision)
        await _until(lambda: follower.applied >= revision, 5)
        assert view == {"/t/b": b"2", "/t/c": b"3", "/t/poison": b"x"}
        [state] = sup.states()
        assert state.status is TaskStatus.RUNNING and state.restarts == 1
        assert "ValueError: cannot apply /t/poison" in caplog.text
        after = await store.put("/t/d", b"4")
        assert await follower.wait_applied(after, timeout=2.0)
        assert view["/t/d"] == b"4" and follower.relists == 1
    finally:
        await follower.stop()
        undo()


@pytest.mark.etcd
async def test_a_compacted_watch_relists_without_a_restart(
        etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    """The appliance loses etcd (its connection is cut; etcd itself stays up) while nodes
    change and the history is compacted: when the watch comes back its revision is gone; the
    node cache reads the prefix again, and a node added afterwards is in it within 2 s."""
    namespace = f"/test-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy(etcd_server.endpoint)
    await proxy.start()
    watched = EtcdStore([proxy.endpoint], namespace=namespace)
    direct = EtcdStore([etcd_server.endpoint], namespace=namespace)
    writer = Inventory(direct)
    await writer.add_node(Node(MAC[0], "node000"))
    await writer.add_node(Node(MAC[1], "node001"))
    sup = Supervisor()
    undo = supervisor.install(sup)
    inventory = Inventory(watched)
    try:
        await inventory.start()
        assert inventory.node_by_name("node001") is not None
        await proxy.cut()
        await writer.delete_node("node000")
        revision = await writer.add_node(Node(MAC[2], "node002"))
        await direct.compact(revision)
        with caplog.at_level(logging.WARNING, logger="provisioner.inventory.follower"):
            await proxy.start()
            await _until(lambda: inventory.node_by_name("node002") is not None, 20)
        assert inventory.node_by_name("node000") is None
        assert inventory.node_by_name("node001") is not None
        assert "reading it again" in caplog.text and "compacted" in caplog.text.lower()
        assert all(s.restarts == 0 and s.status is TaskStatus.RUNNING for s in sup.states())
        await writer.add_node(Node(MAC[3], "node003"))
        took = await _until(lambda: inventory.node_by_name("node003") is not None, 2.0)
        print(f"a node added after the relist reached the cache in {took * 1000:.0f} ms")
    finally:
        await inventory.stop()
        undo()
        await sup.close()
        await proxy.cut()
        await watched.close()
        await direct.close()
