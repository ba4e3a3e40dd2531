"""The node state machine: the table itself, the boot path over every store backend, callback
timeouts with a hand-moved clock, the handoff through the real outbox, and the timeline."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

import pytest

from provisioner.errors import InvalidTransition
from provisioner.handoff.base import NoHandoff
from provisioner.handoff.outbox import HandoffQueue
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import (
    BOOTABLE,
    DEFAULT_CALLBACK_TIMEOUT,
    TRANSITIONS,
    Lifecycle,
    check_transition,
    timeline,
)
from provisioner.nodes.model import (
    BootEvent,
    Group,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
)
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore

S = NodeState
MAC = MacAddress("52:54:00:00:00:01")
FACTS = {"cpus": 4, "memory_mib": 2048, "disks": [], "nics": [{"name": "eth0", "mac": str(MAC)}]}
#: the table as the design reads it; the test fails if the code drifts from it
LEGAL = {
    (S.DISCOVERED, S.REGISTERED), (S.DISCOVERED, S.PROVISIONING), (S.DISCOVERED, S.FAILED),
    (S.DISCOVERED, S.RETIRED),
    (S.REGISTERED, S.PROVISIONING), (S.REGISTERED, S.FAILED), (S.REGISTERED, S.RETIRED),
    (S.PROVISIONING, S.PROVISIONING), (S.PROVISIONING, S.BOOTED), (S.PROVISIONING, S.FAILED),
    (S.PROVISIONING, S.REGISTERED),
    (S.BOOTED, S.READY), (S.BOOTED, S.PROVISIONING), (S.BOOTED, S.DRAINING),
    (S.BOOTED, S.FAILED),
    (S.READY, S.PROVISIONING), (S.READY, S.DRAINING), (S.READY, S.REIMAGING),
    (S.READY, S.FAILED),
    (S.DRAINING, S.READY), (S.DRAINING, S.PROVISIONING), (S.DRAINING, S.REIMAGING),
    (S.DRAINING, S.FAILED), (S.DRAINING, S.RETIRED),
    (S.REIMAGING, S.PROVISIONING), (S.REIMAGING, S.FAILED), (S.REIMAGING, S.READY),
    (S.FAILED, S.PROVISIONING), (S.FAILED, S.BOOTED), (S.FAILED, S.REGISTERED),
    (S.FAILED, S.REIMAGING), (S.FAILED, S.RETIRED),
    (S.RETIRED, S.REGISTERED),
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_every_pair_of_states_is_legal_or_refused_with_the_allowed_targets(
        current: NodeState, target: NodeState) -> None:
    node = Node(MAC, "node001", state=current)
    if (current, target) in LEGAL:
        check_transition(node, target)
        return
    with pytest.raises(InvalidTransition) as refused:
        check_transition(node, target)
    message = str(refused.value)
    assert f"node node001 is {current.value}" in message
    assert f"cannot go to {target.value}" in message
    for allowed in TRANSITIONS[current]:
        assert allowed.value in message.split("can go to:")[1]


def test_the_table_covers_every_state_and_retired_is_nearly_final() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert S.RETIRED not in BOOTABLE and S.DRAINING in BOOTABLE


async def _inventory(store: KeyValueStore, *nodes: Node) -> Inventory:
    inventory = Inventory(store)
    for node in nodes:
        await inventory.add_node(node)
    await inventory.start()
    return inventory


async def test_boot_path_without_handoff_goes_to_ready_with_every_step_on_the_timeline(
        store: KeyValueStore) -> None:
    clock = Clock()
    inventory = await _inventory(store, Node(MAC, "node001", groups=()))
    try:
        life = Lifecycle(inventory, None, clock)
        node = await life.boot_script_served(MAC, "compute", "2")
        assert node.state is S.PROVISIONING
        clock.now += 21.5
        node = await life.booted(MAC, FACTS, "2", "compute")
        assert node.state is S.READY
        stored = (await inventory.get_node("node001")).value
        assert stored.state is S.READY and stored.hardware["cpus"] == 4
        events = await inventory.list_events(MAC)
        assert [e.kind for e in events] == ["provisioning", "booted", "ready"]
        assert events[0].detail["from"] == "registered" and events[0].detail["version"] == "2"
        assert "handoff is off" in events[2].detail["reason"]
        entries = timeline(events, clock.now + 10)
        assert entries[0].duration == pytest.approx(21.5)
        assert entries[2].duration == pytest.approx(10.0)
        assert entries[1].offset == pytest.approx(21.5)
    finally:
        await inventory.stop()


async def test_a_refused_transition_changes_nothing(store: KeyValueStore) -> None:
    inventory = await _inventory(store, Node(MAC, "node001", state=S.RETIRED))
    try:
        life = Lifecycle(inventory, None, Clock())
        with pytest.raises(InvalidTransition, match="from retired it can go to: registered"):
            await life.booted(MAC, FACTS, "1")
        assert (await inventory.get_node("node001")).value.state is S.RETIRED
        assert await inventory.list_events(MAC) == []
    finally:
        await inventory.stop()


async def test_a_version_other_than_the_one_served_is_flagged_on_the_booted_event() -> None:
    inventory = await _inventory(MemoryStore(), Node(MAC, "node001"))
    try:
        life = Lifecycle(inventory, None, Clock())
        await life.boot_script_served(MAC, "compute", "3")
        await life.booted(MAC, FACTS, "2", "compute")
        booted = next(e for e in await inventory.list_events(MAC) if e.kind == "booted")
        assert booted.detail["version_mismatch"] is True
        assert booted.detail["expected_version"] == "3"
    finally:
        await inventory.stop()


async def test_booted_goes_through_the_real_outbox_and_ready_comes_from_its_confirmation(
        ) -> None:
    store = MemoryStore()
    inventory = await _inventory(store, Node(MAC, "node001", settings={
        "scheduler_partition": "batch", "scheduler_features": "gpu, fast"}))
    life = Lifecycle(inventory, None, Clock())
    queue = HandoffQueue(store, NoHandoff(), life.confirmed, first_delay=0.01)
    life.handoff = queue
    await queue.start()
    try:
        await life.boot_script_served(MAC, "compute", "1")
        node = await life.booted(MAC, FACTS, "1")
        assert node.state is S.BOOTED
        for _ in range(200):
            if (await inventory.get_node("node001")).value.state is S.READY:
                break
            await asyncio.sleep(0.01)
        assert (await inventory.get_node("node001")).value.state is S.READY
        kinds = [e.kind for e in await inventory.list_events(MAC)]
        assert kinds == ["provisioning", "booted", "ready"]
        booted = (await inventory.list_events(MAC))[1]
        assert booted.detail["handoff"] == "queued"
        ticket = life.ticket(node, FACTS)
        assert ticket.partition == "batch" and ticket.features == ("gpu", "fast")
        assert ticket.cpus == 4 and ticket.memory_mib == 2048
        await life.handed_off(MAC)  # a second confirmation is harmless
        assert len(await inventory.list_events(MAC)) == 3
        # the outbox entry went in the ready transition's txn
        assert await queue.queued() == []
    finally:
        await queue.stop()
        await inventory.stop()


async def test_a_missing_callback_fails_the_node_after_its_effective_timeout(
        store: KeyValueStore) -> None:
    clock = Clock()
    slow, fast = MacAddress("52:54:00:00:00:02"), MAC
    inventory = Inventory(store)
    await inventory.add_group(Group("quick", {"callback_timeout": 30}))
    await inventory.add_node(Node(fast, "fast", groups=("quick",)))
    await inventory.add_node(Node(slow, "slow"))
    await inventory.start()
    try:
        await asyncio.sleep(0.05)  # the group reaches the cache through the watch
        life = Lifecycle(inventory, None, clock)
        await life.boot_script_served(fast, "compute", "1")
        await life.boot_script_served(slow, "compute", "1")
        clock.now += 29
        assert await life.sweep() == []
        clock.now += 2
        assert await life.sweep() == [fast]
        assert (await inventory.get_node("fast")).value.state is S.FAILED
        failed = (await inventory.list_events(fast))[-1]
        assert failed.kind == "failed" and failed.detail["reason"] == "no boot callback in time"
        clock.now += DEFAULT_CALLBACK_TIMEOUT
        assert await life.sweep() == [slow]
        assert await life.sweep() == []
    finally:
        await inventory.stop()


async def test_a_callback_in_time_cancels_the_deadline_and_a_late_one_still_counts() -> None:
    clock = Clock()
    inventory = await _inventory(MemoryStore(), Node(MAC, "node001"))
    try:
        life = Lifecycle(inventory, None, clock)
        await life.boot_script_served(MAC, "compute", "1")
        await life.booted(MAC, FACTS, "1")
        clock.now += 10 * DEFAULT_CALLBACK_TIMEOUT
        assert await life.sweep() == [] and life.pending() == {}
        await life.boot_script_served(MAC, "compute", "1")
        clock.now += DEFAULT_CALLBACK_TIMEOUT + 1
        assert await life.sweep() == [MAC]
        node = await life.booted(MAC, FACTS, "1")  # late, but it did boot
        assert node.state is S.READY
    finally:
        await inventory.stop()


async def test_deadlines_survive_a_restart_from_the_provisioning_event(
        store: KeyValueStore) -> None:
    clock = Clock()
    inventory = await _inventory(store, Node(MAC, "node001"))
    try:
        await Lifecycle(inventory, None, clock).boot_script_served(MAC, "compute", "1")
        await asyncio.sleep(0.05)
        restarted = Lifecycle(inventory, None, clock)
        await restarted.start()
        assert restarted.pending() == {MAC.value: clock.now + DEFAULT_CALLBACK_TIMEOUT}
        clock.now += DEFAULT_CALLBACK_TIMEOUT
        assert await restarted.sweep() == [MAC]
    finally:
        await inventory.stop()


def test_timeline_orders_events_and_only_state_changes_have_durations() -> None:
    events = [
        BootEvent(MAC, "booted", 130.0, {"from": "provisioning"}),
        BootEvent(MAC, "dhcp_offered", 100.0, {}),
        BootEvent(MAC, "provisioning", 101.0, {"from": "registered"}),
        BootEvent(MAC, "tftp_served", 100.5, {"file": "undionly.kpxe"}),
    ]
    entries = timeline(events, now=150.0)
    assert [e.event.kind for e in entries] == ["dhcp_offered", "tftp_served", "provisioning",
                                               "booted"]
    assert [e.duration for e in entries] == [None, None, 29.0, 20.0]
    assert [e.state for e in entries] == [None, None, "provisioning", "booted"]
    assert [e.offset for e in entries] == [0.0, 0.5, 1.0, 30.0]
    assert timeline([], 1.0) == []


def _layered_by_hand(node: Node, groups: dict[str, Group],
                     defaults: dict[str, SettingValue]) -> dict[str, SettingValue]:
    """How Lifecycle layered settings before it used model.effective_values: the reference
    the one function must still agree with (it adds only the node's `image` field)."""
    layers: list[Mapping[str, SettingValue]] = [defaults]
    layers += [groups[g].settings for g in node.groups if g in groups]
    layers.append(node.settings)
    return {k: v for layer in layers for k, v in layer.items()}


async def test_the_handoff_ticket_and_timeout_read_the_one_layering() -> None:
    groups = [Group("batch", {"scheduler_partition": "batch", "callback_timeout": 120}),
              Group("gpu", {"scheduler_features": "gpu", "scheduler_partition": "gpu"}),
              Group("slow", {"callback_timeout": 1800})]
    defaults: dict[str, SettingValue] = {"scheduler_partition": "default",
                                         "callback_timeout": 300}
    inventory = Inventory(MemoryStore())
    for group in groups:
        await inventory.add_group(group)
    nodes = [Node(MacAddress(f"52:54:00:00:04:{i:02x}"), f"n{i}", image="compute:1",
                  groups=tuple(g.name for g in order),
                  settings={"scheduler_features": "fast"} if i % 2 else {})
             for i, order in enumerate(itertools.permutations(groups))]
    nodes.append(Node(MacAddress("52:54:00:00:04:ff"), "lonely", groups=("gone",)))
    await inventory.start()
    try:
        await asyncio.sleep(0.05)  # the groups reach the cache through the watch
        life = Lifecycle(inventory, None, Clock(), defaults=defaults)
        by_name = {g.name: g for g in groups}
        for node in nodes:
            before = _layered_by_hand(node, by_name, defaults)
            after = life.effective(node)
            assert {k: v for k, v in after.items() if k != "image"} == before, node.groups
            assert after.get("image") == node.image
            ticket = life.ticket(node, FACTS)
            assert ticket.partition == before["scheduler_partition"]
            assert ",".join(ticket.features) == before.get("scheduler_features", "")
            assert life.callback_timeout(node) == before["callback_timeout"]
    finally:
        await inventory.stop()
