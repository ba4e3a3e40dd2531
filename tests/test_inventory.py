"""The inventory over every store backend: typed CRUD, unique names, CAS races, the watch cache."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from provisioner.errors import Conflict, NotFound, ValidationError
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import BootEvent, Group, Lease, MacAddress, Node, NodeState
from provisioner.store.base import KeyValueStore

MAC1 = MacAddress("52:54:00:00:00:01")
MAC2 = MacAddress("52:54:00:00:00:02")
IP = ipaddress.IPv4Address("10.0.0.11")


async def test_add_get_by_mac_forms_and_name(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "node001", ip=IP, groups=("compute",)))
    for ref in ("52-54-00-00-00-01", "5254.0000.0001", "node001", "NODE001"):
        assert (await inv.get_node(ref)).value.ip == IP
    with pytest.raises(NotFound, match="node list"):
        await inv.get_node("node999")


async def test_mac_and_name_are_unique(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "node001"))
    with pytest.raises(Conflict, match="already exists"):
        await inv.add_node(Node(MAC1, "node002"))
    with pytest.raises(Conflict, match="belongs to node 52:54:00:00:00:01"):
        await inv.add_node(Node(MAC2, "node001"))
    # The failed add of MAC1 as node002 must not have kept the name node002.
    await inv.add_node(Node(MAC2, "node002"))


async def test_rename_moves_the_name_and_frees_the_old_one(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "old"))
    await inv.update_node("old", lambda n: n.with_changes(name="new"))
    assert (await inv.get_node("new")).value.mac == MAC1
    with pytest.raises(NotFound):
        await inv.get_node("old")
    await inv.add_node(Node(MAC2, "old"))


async def test_concurrent_updates_lose_nothing(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "n1"))

    def add_fact(i: int):  # type: ignore[no-untyped-def]
        return lambda n: n.with_changes(hardware={**n.hardware, f"f{i}": i})

    await asyncio.gather(*(inv.update_node("n1", add_fact(i)) for i in range(8)))
    assert (await inv.get_node("n1")).value.hardware == {f"f{i}": i for i in range(8)}


async def test_update_cannot_change_the_mac(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "n1"))
    with pytest.raises(ValidationError, match="mac"):
        await inv.update_node("n1", lambda n: n.with_changes(mac=MAC2))


async def test_list_filters(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "a", groups=("gpu",), image="img1"))
    await inv.add_node(Node(MAC2, "b", state=NodeState.DISCOVERED))
    assert [n.name for n in await inv.list_nodes(state=NodeState.DISCOVERED)] == ["b"]
    assert [n.name for n in await inv.list_nodes(group="gpu")] == ["a"]
    assert [n.name for n in await inv.list_nodes(image="img1")] == ["a"]


async def test_groups_and_effective_settings(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_group(Group("compute", {"kernel_args": "quiet"}))
    with pytest.raises(Conflict, match="already exists"):
        await inv.add_group(Group("compute"))
    await inv.add_node(Node(MAC1, "n1", groups=("compute",)))
    eff = await inv.effective((await inv.get_node("n1")).value, {"console": "ttyS0"})
    assert {k: e.source for k, e in eff.items()} == {"console": "default",
                                                     "kernel_args": "group:compute"}
    with pytest.raises(Conflict, match="still has 1 node"):
        await inv.delete_group("compute")
    await inv.delete_node("n1")
    await inv.delete_group("compute")
    assert await inv.list_groups() == []


async def test_cache_follows_the_store(store: KeyValueStore) -> None:
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "n1", ip=IP))
    await inv.start()
    try:
        assert inv.node_by_mac(MAC1) is not None
        writer = Inventory(store)  # another writer, e.g. the CLI
        await writer.add_node(Node(MAC2, "n2"))
        await writer.update_node("n1", lambda n: n.with_changes(name="renamed", ip=None))
        async with asyncio.timeout(10):
            while inv.node_by_mac(MAC2) is None or inv.node_by_name("renamed") is None:
                await asyncio.sleep(0.01)
        assert inv.node_by_name("n1") is None and inv.node_by_ip(IP) is None
        await writer.delete_node("n2")
        async with asyncio.timeout(10):
            while inv.node_by_mac(MAC2) is not None:
                await asyncio.sleep(0.01)
    finally:
        await inv.stop()


async def test_cache_skips_unreadable_entries(store: KeyValueStore) -> None:
    await store.put(keys.node("garbage"), b"{not json")
    inv = Inventory(store)
    await inv.start()
    await inv.stop()
    assert inv.cached_nodes() == []


async def test_leases_cas_and_events_in_order(store: KeyValueStore) -> None:
    inv = Inventory(store)
    lease = Lease(IP, MAC1, expires=1000.0)
    await inv.put_lease(lease, expect=0)
    with pytest.raises(Conflict):
        await inv.put_lease(Lease(IP, MAC2, expires=1000.0), expect=0)
    current = await inv.get_lease(IP)
    assert current is not None and current.value == lease
    for i, kind in enumerate(["dhcp_offered", "dhcp_acked", "booted"]):
        await inv.add_event(BootEvent(MAC1, kind, 100.0 + i))
    await inv.add_event(BootEvent(MAC1, "ready", 103.0))
    await inv.add_event(BootEvent(MAC1, "ready_again", 103.0))  # same timestamp: still kept
    assert [e.kind for e in await inv.list_events(MAC1)] == [
        "dhcp_offered", "dhcp_acked", "booted", "ready", "ready_again"]


async def test_concurrent_adds_of_one_name_admit_exactly_one(store: KeyValueStore) -> None:
    """An in-flight claim (node not written yet) must not look like a crash leftover."""
    inv = Inventory(store)
    macs = [MacAddress(f"52:54:00:00:01:{i:02x}") for i in range(8)]
    results = await asyncio.gather(*(inv.add_node(Node(m, "same")) for m in macs),
                                   return_exceptions=True)
    assert sum(isinstance(r, int) for r in results) == 1, results
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int))
    assert len(await inv.list_nodes()) == 1


async def test_a_stale_claim_is_taken_over(store: KeyValueStore) -> None:
    await store.put(keys.name("orphan"), b"52:54:00:00:00:99 1.0")  # crashed add, old form
    inv = Inventory(store)
    await inv.add_node(Node(MAC1, "orphan"))
    assert (await inv.get_node("orphan")).value.mac == MAC1
