"""Stage retries (nodes/retries.py) with a hand-moved clock and a fake power driver: a boot that
stops at a stage is power-cycled again with backoff, each retry on the timeline, then failed
with the stage named; a manual node is failed at once; nothing is cycled that is not recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.config_retries import RetrySettings
from provisioner.errors import ConfigError, StoreUnavailable
from provisioner.ha.election import Election
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import BootEvent, MacAddress, Node, NodeState, SettingValue
from provisioner.nodes.retries import (
    POWER_CYCLED,
    BootRetries,
    Stage,
    Waiting,
    power_cycled,
    waiting,
)
from provisioner.power.base import PowerDriver
from provisioner.store.memory import MemoryStore
from tests.support.waiting import eventually

MAC = MacAddress("52:54:00:00:00:01")
QEMU: dict[str, SettingValue] = {"power_driver": "qemu", "power_address": "/run/node1.qmp"}
SETTINGS = RetrySettings(dhcp_deadline=100, script_deadline=50, callback_deadline=300,
                         max_retries=2, backoff=2.0, interval=0.01)
T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FlakyStore(MemoryStore):
    """Refuses event writes while `down`, as an etcd that is restarting."""

    down = False

    async def put(self, key: str, value: bytes, *, expect: int | None = None,
                  lease: int = 0) -> int:
        if self.down and key.startswith(keys.EVENTS):
            raise StoreUnavailable("the test made the store unreachable")
        return await super().put(key, value, expect=expect, lease=lease)


@dataclass
class FakeDriver:
    """Counts power cycles; the qemu driver's kind, so retries may use it."""

    kind: str = "qemu"
    cycles: list[str] = field(default_factory=list)

    async def cycle(self) -> None:
        self.cycles.append("cycle")


@dataclass
class World:
    store: FlakyStore
    inventory: Inventory
    lifecycle: Lifecycle
    retries: BootRetries
    clock: Clock
    driver: FakeDriver

    async def cycled(self, at: float) -> None:
        """An operator's power cycle, as the API records it."""
        await self.inventory.add_event(power_cycled(MAC, at, by="admin"))
        self.retries.saw(power_cycled(MAC, at, by="admin"))

    async def event(self, kind: str, at: float) -> None:
        event = BootEvent(MAC, kind, at, {"ip": "10.0.0.10"})
        await self.inventory.add_event(event)
        self.retries.saw(event)

    async def node(self) -> Node:
        return (await self.inventory.get_node(MAC.value)).value

    async def timeline(self) -> list[BootEvent]:
        return await self.inventory.list_events(MAC)


async def _world(settings: Mapping[str, SettingValue]) -> AsyncIterator[World]:
    store, clock, driver = FlakyStore(), Clock(), FakeDriver()
    inventory = Inventory(store)
    await inventory.add_node(Node(MAC, "node001", state=NodeState.READY, settings=settings))
    await inventory.start()
    lifecycle = Lifecycle(inventory, None, clock)

    def opener(_settings: Mapping[str, SettingValue], _node: str) -> PowerDriver:
        return driver  # type: ignore[return-value]

    retries = BootRetries(inventory, lifecycle, SETTINGS, clock=clock, opener=opener)
    try:
        yield World(store, inventory, lifecycle, retries, clock, driver)
    finally:
        await inventory.stop()
        await store.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async for w in _world(QEMU):
        yield w


@pytest.fixture
async def manual_world() -> AsyncIterator[World]:
    async for w in _world({"power_driver": "manual"}):
        yield w


def test_waiting_reads_the_stage_off_the_timeline() -> None:
    def ev(kind: str, at: float, **detail: object) -> BootEvent:
        return BootEvent(MAC, kind, at, detail)

    assert waiting([ev("ready", 1, **{"from": "booted"})]) is None
    cycle = ev(POWER_CYCLED, 10, by="admin")
    assert waiting([cycle]) == Waiting(Stage.DHCP, 10, 0)
    acked = ev("dhcp_acked", 20)
    assert waiting([cycle, acked]) == Waiting(Stage.SCRIPT, 20, 0)
    script = ev("provisioning", 30, **{"from": "ready"})
    assert waiting([script, acked, cycle]) == Waiting(Stage.CALLBACK, 30, 0)
    assert waiting([cycle, script]) == Waiting(Stage.CALLBACK, 30, 0)  # ACK not recorded
    assert waiting([cycle, acked, script, ev("booted", 40, **{"from": "provisioning"})]) is None
    retry = ev(POWER_CYCLED, 50, by="retry", retry=2, stage="script")
    assert waiting([cycle, acked, retry]) == Waiting(Stage.DHCP, 50, 2)


async def test_no_dhcp_is_retried_with_backoff_then_failed_naming_the_stage(
        world: World) -> None:
    await world.cycled(T0)
    world.clock.now = T0 + 99
    assert await world.retries.look() == []
    world.clock.now = T0 + 100
    assert await world.retries.look() == [MAC]
    assert world.driver.cycles == ["cycle"]
    retry = (await world.timeline())[-1]
    assert retry.kind == POWER_CYCLED
    assert retry.detail == {"by": "retry", "retry": 1, "stage": "dhcp"}
    world.clock.now = T0 + 100 + 199  # the second wait is twice as long
    assert await world.retries.look() == []
    world.clock.now = T0 + 100 + 200
    assert await world.retries.look() == [MAC]
    assert len(world.driver.cycles) == 2
    world.clock.now += 400
    assert await world.retries.look() == [MAC]
    assert len(world.driver.cycles) == 2  # no third cycle: max_retries is 2
    node = await world.node()
    assert node.state is NodeState.FAILED
    reason = (await world.timeline())[-1].detail["reason"]
    assert "stage dhcp" in reason and "2 retries" in reason
    assert world.retries.watched == {}


async def test_progress_moves_the_deadline_to_the_next_stage(world: World) -> None:
    await world.cycled(T0)
    await world.event("dhcp_acked", T0 + 90)
    world.clock.now = T0 + 120  # the DHCP deadline has passed, but DHCP came
    assert await world.retries.look() == []
    world.clock.now = T0 + 140  # 50 s after the ACK: no script
    assert await world.retries.look() == [MAC]
    assert (await world.timeline())[-1].detail["stage"] == "script"
    await world.event("dhcp_acked", T0 + 150)
    world.clock.now = T0 + 155
    await world.lifecycle.boot_script_served(MAC, "compute", "1")
    await world.lifecycle.booted(MAC, {}, "1")  # through: no longer watched
    world.clock.now += 10_000
    assert await world.retries.look() == []
    assert world.retries.watched == {}
    assert len(world.driver.cycles) == 1


async def test_a_manual_node_is_failed_with_the_stage_and_what_to_do(
        manual_world: World) -> None:
    w = manual_world
    await w.cycled(T0)
    w.clock.now = T0 + 100
    assert await w.retries.look() == [MAC]
    assert w.driver.cycles == []
    assert (await w.node()).state is NodeState.FAILED
    reason = (await w.timeline())[-1].detail["reason"]
    assert "stage dhcp" in reason and "power-cycle it by hand" in reason


async def test_a_retry_that_cannot_be_recorded_is_not_made(world: World) -> None:
    await world.cycled(T0)
    world.clock.now = T0 + 100
    world.store.down = True
    assert await world.retries.look() == []
    assert world.driver.cycles == []
    world.store.down = False
    assert await world.retries.look() == [MAC]  # the next look makes it
    assert world.driver.cycles == ["cycle"]


async def test_run_finds_boots_at_start_and_follows_new_ones(world: World) -> None:
    """The task itself: a boot under way before it started is found on the stored timeline,
    a power cycle recorded later arrives through the watch."""
    await world.inventory.add_event(power_cycled(MAC, T0, by="admin"))
    task = asyncio.create_task(world.retries.run())
    try:
        await eventually(lambda: MAC.value in world.retries.watched, "the boot is found")
        world.clock.now = T0 + 100
        await eventually(lambda: world.driver.cycles == ["cycle"], "the retry")
        await world.event("dhcp_acked", T0 + 110)
        await world.lifecycle.boot_script_served(MAC, "compute", "1")
        await world.lifecycle.booted(MAC, {}, "1")
        world.clock.now += 10_000
        await eventually(lambda: world.retries.watched == {}, "the boot is through")
        assert world.driver.cycles == ["cycle"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_retries_section_and_the_cache_threshold_are_read_and_checked(
        tmp_path: Path) -> None:
    base = {"PROVISIONER_DATA_DIR": str(tmp_path)}
    settings = load_settings(env={**base, "PROVISIONER_RETRIES_MAX_RETRIES": "5",
                                  "PROVISIONER_RETRIES_DHCP_DEADLINE": "30",
                                  "PROVISIONER_DHCP_LEASE_CACHE_THRESHOLD": "0.5"})
    assert settings.retries.max_retries == 5 and settings.retries.dhcp_deadline == 30.0
    assert settings.dhcp.lease_cache_threshold == 0.5
    assert load_settings(env=base).retries == RetrySettings()
    for key, value in (("RETRIES_BACKOFF", "0.5"), ("RETRIES_SCRIPT_DEADLINE", "0"),
                       ("RETRIES_MAX_RETRIES", "-1"), ("DHCP_LEASE_CACHE_THRESHOLD", "1")):
        with pytest.raises(ConfigError) as refused:
            load_settings(env={**base, f"PROVISIONER_{key}": value})
        assert "\n" not in str(refused.value)


async def test_a_deposed_leader_makes_no_retry(world: World) -> None:
    """With several heads the retry is recorded in one txn with the leader's fence: once
    another head leads, this one records nothing and cycles nothing."""
    election_a = Election(world.store, "singletons", "head1", ttl=30)
    election_b = Election(world.store, "singletons", "head2", ttl=30)
    term = await election_a.campaign()
    world.retries.fence = election_a.fence
    await world.cycled(T0)
    world.clock.now = T0 + 100
    assert await world.retries.look() == [MAC] and world.driver.cycles == ["cycle"]
    stale = election_a.fence()
    world.retries.fence = lambda: stale  # head1 paused: it still thinks it leads
    await world.store.revoke(term.lease)
    await election_b.campaign()
    before = await world.timeline()
    world.clock.now = T0 + 1000
    assert await world.retries.look() == []
    assert world.driver.cycles == ["cycle"] and await world.timeline() == before
