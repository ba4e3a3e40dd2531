"""The outbox is followed: an entry another process writes on the same store (a second
appliance, the CLI), or one written again, is delivered without a restart; `flush` lets the
deliveries under way finish before a stop and leaves the rest in the store."""

from __future__ import annotations

from provisioner.handoff.base import HandoffNode
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.handoff.outbox import HandoffQueue
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress
from provisioner.scheduler.service import SchedulerServer
from provisioner.store.base import KeyValueStore
from tests.handoff.conftest import Confirmations
from tests.support.etcd_server import free_port
from tests.support.twostores import two_stores  # noqa: F401 (a fixture)
from tests.support.waiting import eventually

MAC = MacAddress("52:54:00:12:34:77")
NODE = HandoffNode("node077", MAC, cpus=2, memory_mib=1024)


async def _write(store: KeyValueStore, node: HandoffNode) -> None:
    """What another process's submit (or its booted transition's txn) writes."""
    op = HandoffQueue.entry(node)
    assert op.value is not None
    await store.put(op.key, op.value)


async def _empty(store: KeyValueStore) -> bool:
    return not (await store.range(keys.OUTBOX)).items


async def test_an_entry_written_by_another_process_is_delivered_without_a_restart(
        two_stores: tuple[KeyValueStore, KeyValueStore]) -> None:  # noqa: F811
    ours, theirs = two_stores
    scheduler = SchedulerServer(ours, "127.0.0.1", 0)
    await scheduler.start()
    handoff, confirmed = BuiltinHandoff(scheduler.url), Confirmations()
    queue = HandoffQueue(ours, handoff, confirmed)
    try:
        await queue.start()  # nothing queued yet
        await _write(theirs, NODE)
        await eventually(lambda: len(confirmed.macs) == 1, "the other process's entry")
        await eventually(lambda: _empty(ours), "the delivered entry deleted")
        await _write(theirs, HandoffNode("node077", MAC, cpus=16, memory_mib=1024))
        await eventually(lambda: len(confirmed.macs) == 2, "the entry written again")
        await eventually(lambda: _empty(ours), "the second entry deleted")
        assert scheduler.state.node("node077").cpus == 16
    finally:
        await queue.stop()
        await handoff.close()
        await scheduler.stop()


async def test_flush_delivers_what_it_can_and_leaves_the_rest_queued(
        two_stores: tuple[KeyValueStore, KeyValueStore]) -> None:  # noqa: F811
    store = two_stores[0]
    scheduler = SchedulerServer(store, "127.0.0.1", 0)
    await scheduler.start()
    up = BuiltinHandoff(scheduler.url)
    queue = HandoffQueue(store, up, Confirmations())
    try:
        await queue.start()
        await queue.submit(NODE)
        assert await queue.flush(10.0) == 0
        assert await _empty(store)
    finally:
        await queue.stop()
        await up.close()
        await scheduler.stop()
    down = BuiltinHandoff(f"http://127.0.0.1:{free_port()}", timeout=0.2)
    queue = HandoffQueue(store, down, Confirmations(), first_delay=0.05, max_delay=0.1)
    try:
        await queue.start()
        await queue.submit(NODE)
        assert await queue.flush(0.5) == 1  # the scheduler is down: it cannot be delivered
    finally:
        await queue.stop()
        await down.close()
    assert [n.name for n in await HandoffQueue(store, down, Confirmations()).queued()] == [
        "node077"]
