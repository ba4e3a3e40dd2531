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
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import (
    BOOTABLE,
    DEFAULT_CALLBACK_TIMEOUT,
    STEPS,
    TRANSITIONS,
    Lifecycle,
    event_between,
    next_state,
    step_state,
)
from provisioner.nodes.model import Group, MacAddress, Node, NodeEvent, NodeState, SettingValue
from provisioner.nodes.timeline import timeline
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore

S = NodeState
E = NodeEvent
MAC = MacAddress("52:54:00:00:00:01")
FACTS = {"cpus": 4, "memory_mib": 2048, "disks": [], "nics": [{"name": "eth0", "mac": str(MAC)}]}
#: the table as the design reads it, (from, event, to); the test fails if the code drifts
ROWS = [
    (S.DISCOVERED, E.REGISTER, S.REGISTERED), (S.PROVISIONING, E.REGISTER, S.REGISTERED),
    (S.FAILED, E.REGISTER, S.REGISTERED), (S.RETIRED, E.REGISTER, S.REGISTERED),
    (S.DISCOVERED, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.REGISTERED, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.PROVISIONING, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.BOOTED, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.READY, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.DRAINING, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.REIMAGING, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.FAILED, E.BOOT_SCRIPT_SERVED, S.PROVISIONING),
    (S.PROVISIONING, E.CALLBACK, S.BOOTED), (S.FAILED, E.CALLBACK, S.BOOTED),
    (S.BOOTED, E.HANDED_OFF, S.READY),
    (S.BOOTED, E.DRAIN, S.DRAINING), (S.READY, E.DRAIN, S.DRAINING),
    (S.DRAINING, E.RESUME, S.READY), (S.REIMAGING, E.RESUME, S.READY),
    (S.READY, E.REIMAGE, S.REIMAGING), (S.DRAINING, E.REIMAGE, S.REIMAGING),
    (S.FAILED, E.REIMAGE, S.REIMAGING),
    (S.DISCOVERED, E.FAIL, S.FAILED), (S.REGISTERED, E.FAIL, S.FAILED),
    (S.PROVISIONING, E.FAIL, S.FAILED), (S.BOOTED, E.FAIL, S.FAILED),
    (S.READY, E.FAIL, S.FAILED), (S.DRAINING, E.FAIL, S.FAILED),
    (S.REIMAGING, E.FAIL, S.FAILED),
    (S.DISCOVERED, E.RETIRE, S.RETIRED), (S.REGISTERED, E.RETIRE, S.RETIRED),
    (S.DRAINING, E.RETIRE, S.RETIRED), (S.FAILED, E.RETIRE, S.RETIRED),
]
MISSING = [(s, e) for s, e in itertools.product(S, E)
           if (s, e) not in {(a, b) for a, b, _ in ROWS}]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_code_reads_the_table_as_the_design_does() -> None:
    assert {(a, e, b) for (a, e), b in TRANSITIONS.items()} == set(ROWS)
    assert len(ROWS) == len(set(ROWS))
    assert {a for a, _, _ in ROWS} == set(S)  # every state has a way out
    assert S.RETIRED not in BOOTABLE and S.DRAINING in BOOTABLE


def test_an_event_leads_to_one_state_and_two_states_are_joined_by_one_event() -> None:
    """So an error can name where an event leads, and an operator's `set state` finds the one
    event that does it. A step (STEPS) leads nowhere: it keeps the state."""
    for event in set(E) - set(STEPS):
        assert len({b for _, e, b in ROWS if e is event}) == 1, event
    pairs = [(a, b) for a, _, b in ROWS]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(("current", "event", "target"), ROWS)
async def test_each_row_moves_a_stored_node_and_records_the_event(
        current: NodeState, event: NodeEvent, target: NodeState) -> None:
    node = Node(MAC, "node001", state=current)
    assert next_state(node, event) is target
    assert event_between(node, target) is event
    inventory = await _inventory(MemoryStore(), node)
    try:
        moved = await Lifecycle(inventory, None, Clock()).transition(MAC, event, reason="test")
        assert moved.state is target
        assert (await inventory.get_node("node001")).value.state is target
        [recorded] = await inventory.list_events(MAC)
        assert recorded.kind == target.value
        assert recorded.detail["from"] == current.value
        assert recorded.detail["event"] == event.value
    finally:
        await inventory.stop()


@pytest.mark.parametrize(("current", "event"), MISSING)
def test_an_event_not_in_the_table_is_refused_with_the_allowed_targets(
        current: NodeState, event: NodeEvent) -> None:
    node = Node(MAC, "node001", state=current)
    with pytest.raises(InvalidTransition) as refused:
        next_state(node, event)
    message = str(refused.value)
    assert f"node node001 is {current.value}" in message
    assert refused.value.allowed == tuple(sorted({b.value for a, _, b in ROWS if a is current}))
    for allowed in refused.value.allowed:
        assert allowed in message.split("can go to:")[1]


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_setting_a_state_needs_a_row_between_the_two(current: NodeState,
                                                     target: NodeState) -> None:
    node = Node(MAC, "node001", state=current)
    rows = [e for a, e, b in ROWS if a is current and b is target]
    if rows:
        assert event_between(node, target) is rows[0]
        return
    with pytest.raises(InvalidTransition, match=f"cannot go to {target.value};"):
        event_between(node, target)


async def test_an_operator_sets_a_state_through_the_table() -> None:
    inventory = await _inventory(MemoryStore(), Node(MAC, "node001", state=S.FAILED))
    try:
        life = Lifecycle(inventory, None, Clock())
        node = await life.set_state(MAC, S.RETIRED, reason="set by admin")
        assert node.state is S.RETIRED
        with pytest.raises(InvalidTransition, match=r"from retired it can go to: registered$"):
            await life.set_state(MAC, S.READY, reason="set by admin")
        [event] = await inventory.list_events(MAC)
        assert event.detail["event"] == "retire" and event.detail["reason"] == "set by admin"
    finally:
        await inventory.stop()


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
        assert await life.sweep() == [] and await life.pending() == {}
        await life.boot_script_served(MAC, "compute", "1")
        clock.now += DEFAULT_CALLBACK_TIMEOUT + 1
        assert await life.sweep() == [MAC]
        node = await life.booted(MAC, FACTS, "1")  # late, but it did boot
        assert node.state is S.READY
    finally:
        await inventory.stop()


async def test_a_node_left_provisioning_without_a_deadline_gets_one_from_its_event(
        store: KeyValueStore) -> None:
    """A node left provisioning by a version that kept deadlines in memory only."""
    clock = Clock()
    inventory = await _inventory(store, Node(MAC, "node001"))
    try:
        await Lifecycle(inventory, None, clock).boot_script_served(MAC, "compute", "1")
        await store.delete(keys.deadline(MAC.value))
        await asyncio.sleep(0.05)
        clock.now += 100  # the deadline counts from the provisioning event, not from start
        restarted = Lifecycle(inventory, None, clock)
        await restarted.start()
        assert await restarted.pending() == {
            MAC.value: clock.now - 100 + DEFAULT_CALLBACK_TIMEOUT}
        clock.now += DEFAULT_CALLBACK_TIMEOUT - 100
        assert await restarted.sweep() == [MAC]
    finally:
        await inventory.stop()


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


def test_a_step_keeps_the_state_and_is_refused_outside_its_states() -> None:
    """init_started is a step within provisioning (STEPS), not a move of the table."""
    assert all((s, E.INIT_STARTED) not in TRANSITIONS for s in S)
    provisioning = Node(MAC, "node001", state=S.PROVISIONING)
    assert step_state(provisioning, E.INIT_STARTED) is S.PROVISIONING
    with pytest.raises(InvalidTransition, match="provisioning nodes only"):
        step_state(provisioning.with_changes(state=S.READY), E.INIT_STARTED)
