"""Callback deadlines live in the store: they outlive the appliance that set them, and two
appliances sweeping one store fail an overdue node once, with one timeline event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from provisioner.config import load_settings
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import DEFAULT_CALLBACK_TIMEOUT, Lifecycle
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.service import Appliance
from provisioner.store.base import KeyValueStore
from provisioner.store.sqlite import SqliteStore
from tests.support.twostores import two_stores  # noqa: F401 (a fixture)

MAC = MacAddress("52:54:00:00:00:31")


class Clock:
    def __init__(self, now: float = 2_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def one_node(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[KeyValueStore,
                                                                         Inventory, Lifecycle]]:
    """node031 on a fresh sqlite store, its inventory started, and a lifecycle on `clock`."""
    store = SqliteStore(tmp_path / "store.db")
    inventory = Inventory(store)
    await inventory.add_node(Node(MAC, "node031"))
    await inventory.start()
    try:
        yield store, inventory, Lifecycle(inventory, None, clock)
    finally:
        await inventory.stop()
        await store.close()


async def test_a_deadline_set_before_a_restart_fails_the_node_after_it(tmp_path: Path) -> None:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "sqlite",
        "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_DHCP_MODE": "off",
        "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": "0",
        "PROVISIONER_HANDOFF_KIND": "none"})
    clock = Clock()
    async with contextlib.AsyncExitStack() as stack:
        first = Appliance(settings, clock=clock)
        await first.start(stack)
        await first.inventory.add_node(Node(MAC, "node031"))
        await first.lifecycle.boot_script_served(MAC, "compute", "7")
        assert await first.lifecycle.pending() == {MAC.value: clock.now + DEFAULT_CALLBACK_TIMEOUT}
    clock.now += DEFAULT_CALLBACK_TIMEOUT + 1  # the appliance was down past the deadline
    async with contextlib.AsyncExitStack() as stack:
        second = Appliance(settings, clock=clock)
        await second.start(stack)
        assert await second.lifecycle.sweep() == [MAC]
        node = (await second.inventory.get_node("node031")).value
        assert node.state is NodeState.FAILED
        failed = (await second.inventory.list_events(MAC))[-1]
        assert failed.kind == "failed" and failed.detail["reason"] == "no boot callback in time"
        assert await second.lifecycle.pending() == {}


async def test_two_sweepers_on_one_store_fail_a_node_once(
        two_stores: tuple[KeyValueStore, KeyValueStore]) -> None:  # noqa: F811
    clock = Clock()
    macs = [MacAddress(f"52:54:00:00:01:{i:02x}") for i in range(8)]
    for i, mac in enumerate(macs):
        await Inventory(two_stores[0]).add_node(Node(mac, f"n{i}"))
    inventories = [Inventory(store) for store in two_stores]
    for inventory in inventories:
        await inventory.start()
    try:
        lifecycles = [Lifecycle(inventory, None, clock) for inventory in inventories]
        for i, mac in enumerate(macs):
            await lifecycles[i % 2].boot_script_served(mac, "compute", "1")
        clock.now += DEFAULT_CALLBACK_TIMEOUT + 1
        both = await asyncio.gather(*(life.sweep() for life in lifecycles))
        assert sorted(both[0] + both[1]) == sorted(macs)  # each failed by one sweeper
        for mac in macs:
            kinds = [e.kind for e in await inventories[1].list_events(mac)]
            assert kinds == ["provisioning", "failed"]
        assert [await life.sweep() for life in lifecycles] == [[], []]
    finally:
        for inventory in inventories:
            await inventory.stop()


async def test_a_node_served_again_keeps_its_new_deadline(tmp_path: Path) -> None:
    """A sweep that read the old deadline must not fail a node that fetched its boot script
    again meanwhile: its deadline key changed, so the compare-and-swap refuses."""
    clock = Clock()
    async with one_node(tmp_path, clock) as (store, inventory, life):
        await life.boot_script_served(MAC, "compute", "1")
        stale = await store.get(keys.deadline(MAC.value))
        assert stale is not None
        clock.now += DEFAULT_CALLBACK_TIMEOUT + 1
        await life.boot_script_served(MAC, "compute", "2")  # rebooted: a fresh deadline
        assert not await life._expire(stale, clock.now - 1)
        assert (await inventory.get_node("node031")).value.state is NodeState.PROVISIONING
        assert await life.pending() == {MAC.value: clock.now + DEFAULT_CALLBACK_TIMEOUT}


async def test_a_deleted_node_leaves_no_deadline_behind(tmp_path: Path) -> None:
    clock = Clock()
    async with one_node(tmp_path, clock) as (_, inventory, life):
        await life.boot_script_served(MAC, "compute", "1")
        await inventory.delete_node("node031")
        clock.now += DEFAULT_CALLBACK_TIMEOUT + 1
        assert await life.sweep() == []
        assert await life.pending() == {}


async def test_a_callback_is_checked_against_the_newest_serving_on_any_appliance(
        two_stores: tuple[KeyValueStore, KeyValueStore]) -> None:  # noqa: F811
    clock = Clock()
    await Inventory(two_stores[0]).add_node(Node(MAC, "node031"))
    inventories = [Inventory(store) for store in two_stores]
    for inventory in inventories:
        await inventory.start()
    try:
        first, second = (Lifecycle(inventory, None, clock) for inventory in inventories)
        await first.boot_script_served(MAC, "compute", "1")
        await second.boot_script_served(MAC, "compute", "2")  # it rebooted via the other one
        node = await first.booted(MAC, {"cpus": 1}, "2")  # `first` remembers version 1
        assert node.state is NodeState.READY
        booted = [e for e in await inventories[0].list_events(MAC) if e.kind == "booted"]
        assert "version_mismatch" not in booted[0].detail
        assert await first.pending() == {}
    finally:
        for inventory in inventories:
            await inventory.stop()

