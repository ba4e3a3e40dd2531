"""The node state machine: transitions as data, every step an event on the node's timeline.

Rules of this file (h11 `_state.py` style): the legal moves are the table `TRANSITIONS`,
(state, event) -> next state, read by `next_state` and `event_between` and nothing else; a move
that is not in the table raises InvalidTransition naming the current state and the states it
may go to. A step within a state (`STEPS`: init_started, within provisioning) is no row of
it. Time comes from the injected `clock`, so tests move it by hand. Every transition is
written to the node with compare-and-swap in one txn with a BootEvent whose kind is the new
state and whose detail says where it came from and by which event (and with whatever the
caller commits alongside: the boot token's redemption, the audit entry, the handoff outbox
entry or its removal), so a transition is one store round trip.

A provisioning node's callback deadline is a key of its own in the store (keys.deadline), put
in the txn into provisioning and deleted in the one out of it, so it outlives a restart and
every appliance on the store sees the same one. The sweep that fails an overdue node deletes
that key by compare-and-swap in the same txn: with two appliances sweeping one store a node is
failed once, with one timeline event, and a node served again meanwhile (a new deadline) is left
alone.

    discovered ─┐
    registered ─┼─ boot script served ─> provisioning ─ callback ─> booted ─ handed off ─> ready
    failed ─────┘        ^                    │ no callback in time           │ drain
    reimaging ───────────┘                    v                               v
                                            failed           draining ─ reimage ─> reimaging
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from provisioner.errors import Conflict, InvalidTransition, NotFound
from provisioner.handoff.base import HandoffNode
from provisioner.inventory import keys
from provisioner.inventory.repository import Also, Inventory
from provisioner.metrics import stages
from provisioner.nodes.model import (
    BootEvent,
    MacAddress,
    Node,
    NodeEvent,
    NodeState,
    SettingValue,
    effective_values,
)
from provisioner.store.base import KeyValue, TxnConflict, TxnOp

log = logging.getLogger(__name__)

S = NodeState
E = NodeEvent
#: (state, event) -> the state the event moves a node in that state to. Nothing else decides.
TRANSITIONS: Final[Mapping[tuple[NodeState, NodeEvent], NodeState]] = MappingProxyType({
    # An operator accepts a discovered node, resets a stuck or failed one, revives a retired one.
    (S.DISCOVERED, E.REGISTER): S.REGISTERED,
    (S.PROVISIONING, E.REGISTER): S.REGISTERED,
    (S.FAILED, E.REGISTER): S.REGISTERED,
    (S.RETIRED, E.REGISTER): S.REGISTERED,
    # Re-entering provisioning is legal: a node that reboots fetches its boot script again,
    # and that restarts its callback clock.
    (S.DISCOVERED, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.REGISTERED, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.PROVISIONING, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.BOOTED, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.READY, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.DRAINING, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.REIMAGING, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.FAILED, E.BOOT_SCRIPT_SERVED): S.PROVISIONING,
    (S.PROVISIONING, E.CALLBACK): S.BOOTED,
    # A late callback after a timeout proves the node booted after all: accept it.
    (S.FAILED, E.CALLBACK): S.BOOTED,
    (S.BOOTED, E.HANDED_OFF): S.READY,
    (S.BOOTED, E.DRAIN): S.DRAINING,
    (S.READY, E.DRAIN): S.DRAINING,
    (S.DRAINING, E.RESUME): S.READY,
    (S.REIMAGING, E.RESUME): S.READY,
    (S.READY, E.REIMAGE): S.REIMAGING,
    (S.DRAINING, E.REIMAGE): S.REIMAGING,
    (S.FAILED, E.REIMAGE): S.REIMAGING,
    **{(state, E.FAIL): S.FAILED for state in (S.DISCOVERED, S.REGISTERED, S.PROVISIONING,
                                               S.BOOTED, S.READY, S.DRAINING, S.REIMAGING)},
    (S.DISCOVERED, E.RETIRE): S.RETIRED,
    (S.REGISTERED, E.RETIRE): S.RETIRED,
    (S.DRAINING, E.RETIRE): S.RETIRED,
    (S.FAILED, E.RETIRE): S.RETIRED,
})
#: states a node may fetch its boot script in (the iPXE route marks it provisioning)
BOOTABLE: Final = frozenset(s for s, e in TRANSITIONS if e is E.BOOT_SCRIPT_SERVED)
#: Steps within a state, not moves: event -> the states it may happen in. A step keeps the
#: state and goes on the timeline under its own name (a move goes under its new state's).
STEPS: Final[Mapping[NodeEvent, frozenset[NodeState]]] = MappingProxyType({
    # An image whose init is systemd calls twice: from /init once the kernel and the image are
    # up, then from a unit after multi-user.target (the callback: the move to booted).
    E.INIT_STARTED: frozenset({S.PROVISIONING}),
})
DEFAULT_CALLBACK_TIMEOUT: Final = 600  # seconds, when no callback_timeout setting applies


def allowed(current: NodeState) -> tuple[str, ...]:
    """The states `current` may go to, for error messages."""
    return tuple(sorted({t.value for (s, _), t in TRANSITIONS.items() if s is current}))


def next_state(node: Node, event: NodeEvent) -> NodeState:
    """The state `event` moves the node to; InvalidTransition when the table has no row."""
    target = TRANSITIONS.get((node.state, event))
    if target is None:
        leads_to = {t.value for (_, e), t in TRANSITIONS.items() if e is event}
        raise InvalidTransition(node.name, node.state.value, "/".join(sorted(leads_to)),
                                allowed(node.state))
    return target


def step_state(node: Node, event: NodeEvent) -> NodeState:
    """The node's state, when STEPS allows `event` in it; else InvalidTransition."""
    if node.state not in STEPS[event]:
        states = " or ".join(sorted(s.value for s in STEPS[event]))
        raise InvalidTransition(node.name, node.state.value, event.value,
                                (f"{states} nodes only",))
    return node.state


def event_between(node: Node, target: NodeState) -> NodeEvent:
    """The event that moves the node from its state to `target` (an operator sets a state);
    InvalidTransition when no row of the table does."""
    for (state, event), to in TRANSITIONS.items():
        if state is node.state and to is target:
            return event
    raise InvalidTransition(node.name, node.state.value, target.value, allowed(node.state))


class Outbox(Protocol):
    """Where booted nodes go: handoff/outbox.py's HandoffQueue (durable, retried)."""

    async def submit(self, node: HandoffNode) -> None: ...

    def entry(self, node: HandoffNode) -> TxnOp: ...

    def accepted(self, node: HandoffNode, revision: int) -> None: ...

    async def tried(self, mac: str, timeout: float) -> bool: ...


Clock = Callable[[], float]


class Lifecycle:
    """Moves nodes through TRANSITIONS and keeps the callback deadlines of provisioning nodes
    (in the store: see the module docstring)."""

    def __init__(self, inventory: Inventory, handoff: Outbox | None = None,
                 clock: Clock = time.time,
                 defaults: Mapping[str, SettingValue] | None = None) -> None:
        self.inventory = inventory
        self.handoff = handoff
        self.clock = clock
        self.defaults: Mapping[str, SettingValue] = dict(defaults or {})
        #: mac -> (version, deadline revision) of nodes this process served: a hint that
        #: spares the callback a read; the deadline's CAS delete proves it still holds
        self._served: dict[str, tuple[str | None, int]] = {}

    # -- the one way a state changes ------------------------------------------------------

    async def transition(self, mac: MacAddress | str, event: NodeEvent, *, reason: str,
                         detail: Mapping[str, Any] | None = None,
                         change: Callable[[Node], Node] | None = None,
                         also: Also | None = None) -> Node:
        """Apply `event` to a node (the state comes from TRANSITIONS; CAS, retried on races)
        and record it, in one txn with `also`'s writes (see Inventory.update_node_txn)."""
        return (await self._transition(mac, event, reason=reason, detail=detail,
                                       change=change, also=also))[0]

    async def set_state(self, mac: MacAddress | str, target: NodeState, *,
                        reason: str) -> Node:
        """An operator sets the state: allowed when a row of TRANSITIONS leads there."""
        return (await self._transition(mac, target, reason=reason))[0]

    async def _transition(self, mac: MacAddress | str, move: NodeEvent | NodeState, *,
                          reason: str, detail: Mapping[str, Any] | None = None,
                          change: Callable[[Node], Node] | None = None,
                          also: Also | None = None) -> tuple[Node, list[int]]:
        """`transition` (or `set_state`), and the revisions of `also`'s writes."""
        seen: list[tuple[NodeState, NodeEvent, NodeState]] = []
        recorded: list[BootEvent] = []  # the state event of the attempt that committed

        def apply(node: Node) -> Node:
            if isinstance(move, NodeEvent):
                event = move
                target = step_state(node, move) if move in STEPS else next_state(node, move)
            else:
                event, target = event_between(node, move), move
            seen.append((node.state, event, target))
            moved = change(node) if change is not None else node
            return moved.with_changes(state=target)

        def writes(node: Node, attempt: int) -> list[TxnOp]:
            current, event, target = seen[-1]
            kind = event.value if event in STEPS else target.value
            record = BootEvent(node.mac, kind, self.clock(),
                               {"from": current.value, "event": event.value, "reason": reason,
                                **(detail or {})})
            recorded[:] = [record]
            extra = list(also(node, attempt)) if also is not None else []
            deadline = keys.deadline(node.mac.value)
            if target is not S.PROVISIONING and deadline not in {op.key for op in extra}:
                extra.append(TxnOp(deadline, None))  # no callback is awaited any more
            return [self.inventory.event_op(record, attempt), *extra]

        versioned, revisions = await self.inventory.update_node_txn(str(mac), apply,
                                                                    also=writes)
        for record in recorded:
            stages.recorded(record.mac.value, record.kind, record.at)
        if versioned.value.state is not S.PROVISIONING:
            self._served.pop(versioned.value.mac.value, None)
        return versioned.value, revisions[1:]

    async def accept(self, mac: MacAddress | str, *, by: str) -> Node:
        """A discovered node may boot: it is registered (as MAAS accepts an enlisted machine).
        Only a discovered node is accepted; any other state raises InvalidTransition."""

        def discovered_only(node: Node) -> Node:
            if node.state is not S.DISCOVERED:
                raise InvalidTransition(node.name, node.state.value, "accepted",
                                        (S.DISCOVERED.value + " nodes only",))
            return node

        return await self.transition(mac, E.REGISTER, reason=f"accepted by {by}",
                                     change=discovered_only)

    # -- the boot path --------------------------------------------------------------------

    async def boot_script_served(self, mac: MacAddress | str, image: str,
                                 version: str) -> Node:
        """The node fetched its iPXE script: it is provisioning and its callback clock runs."""
        def deadline(node: Node, _attempt: int) -> list[TxnOp]:
            return [self.deadline_op(node, self.clock() + self.callback_timeout(node), version)]

        node, revisions = await self._transition(mac, E.BOOT_SCRIPT_SERVED,
                                                 reason="boot script served",
                                                 detail={"image": image, "version": version},
                                                 also=deadline)
        # The callback checks its version against this, and deletes the deadline at this
        # revision, with no read of its own (see booted).
        self._served[node.mac.value] = (version, revisions[-1])
        return node

    async def init_started(self, mac: MacAddress, image: str | None, version: str, *,
                           also: Also | None = None) -> Node:
        """The image's /init is up and starts the image's own init (systemd): a timeline
        event between the image's download and the callback; the callback clock runs on."""
        return await self.transition(mac, E.INIT_STARTED, reason="init started",
                                     detail={"image": image, "version": version}, also=also)

    @staticmethod
    def deadline_op(node: Node, at: float, version: str | None, expect: int | None = None
                    ) -> TxnOp:
        """The write of `node`'s callback deadline (`version`: what it was served)."""
        value = json.dumps({"deadline": at, "version": version}).encode()
        return TxnOp(keys.deadline(node.mac.value), value, expect)

    async def booted(self, mac: MacAddress | str, facts: Mapping[str, Any], version: str,
                      image: str | None = None, *, also: Also | None = None,
                      agent_hash: str = "") -> Node:
        """The node called back from its image: store its facts, hand it to the scheduler.
        The handoff is queued (durably, in the outbox) in the txn of the booted transition,
        with `also`'s writes (the node plane's token redemption and audit entry).
        `agent_hash` (handoff/agent.py) goes to the scheduler with the handoff only."""
        mac = MacAddress(str(mac))
        hint = self._served.pop(mac.value, None)
        try:
            return await self._booted(mac, facts, version, image, also=also,
                                      agent_hash=agent_hash,
                                      served=hint or await self._served_from_store(mac))
        except TxnConflict as exc:
            if hint is None or keys.deadline(mac.value) not in exc.keys:
                raise
        # Served again (by another appliance) since this one served it: ask the store.
        return await self._booted(mac, facts, version, image, also=also, agent_hash=agent_hash,
                                  served=await self._served_from_store(mac))

    async def _served_from_store(self, mac: MacAddress) -> tuple[str | None, int]:
        """The version a node was served and the revision of its deadline (0: none)."""
        kv = await self.inventory.store.get(keys.deadline(mac.value))
        return (_deadline(kv)[1], kv.mod_revision) if kv is not None else (None, 0)

    async def _booted(self, mac: MacAddress, facts: Mapping[str, Any], version: str,
                      image: str | None, *, also: Also | None, agent_hash: str,
                      served: tuple[str | None, int]) -> Node:
        """`booted`, with what the node was served: its deadline is deleted at the revision
        it was written at, so a callback is checked against the newest serving."""
        expected, revision = served
        done = TxnOp(keys.deadline(mac.value), None, revision)
        detail: dict[str, Any] = {"image": image, "version": version,
                                  "cpus": facts.get("cpus"), "memory_mib": facts.get("memory_mib"),
                                  "handoff": "queued" if self.handoff else "off"}
        if expected is not None and expected != version:
            detail |= {"expected_version": expected, "version_mismatch": True}
        handoff = self.handoff
        queued: list[HandoffNode] = []

        def change(node: Node) -> Node:
            queued[:] = [self.ticket(node, facts, agent_hash)]
            return node.with_changes(hardware=dict(facts))

        def writes(node: Node, attempt: int) -> list[TxnOp]:
            extra = list(also(node, attempt)) if also is not None else []
            return [*extra, done] + ([handoff.entry(queued[0])] if handoff is not None else [])

        node, revisions = await self._transition(mac, E.CALLBACK, reason="callback received",
                                                 detail=detail, change=change, also=writes)
        if handoff is None:
            return await self.transition(node.mac, E.HANDED_OFF,
                                         reason="handoff is off ([handoff] kind = none)")
        handoff.accepted(queued[0], revisions[-1])
        return node

    def ticket(self, node: Node, facts: Mapping[str, Any], agent_hash: str = "") -> HandoffNode:
        settings = self.effective(node)
        features = str(settings.get("scheduler_features", "") or "")
        return HandoffNode(
            name=node.name, mac=node.mac, cpus=_int(facts.get("cpus")),
            memory_mib=_int(facts.get("memory_mib")),
            features=tuple(f.strip() for f in features.split(",") if f.strip()),
            partition=str(settings.get("scheduler_partition", "") or ""), agent_hash=agent_hash)

    async def handed_off(self, mac: MacAddress | str, done: TxnOp | None = None) -> Node:
        """The scheduler confirmed the node. Idempotent: the outbox may confirm twice. `done`
        (the outbox entry's removal) is committed with the ready transition."""
        try:
            return await self.transition(mac, E.HANDED_OFF, reason="scheduler confirmed",
                                         also=(lambda _n, _a: [done]) if done else None)
        except InvalidTransition as exc:
            if exc.current == S.READY.value:
                return (await self.inventory.get_node(str(mac))).value
            raise

    async def confirmed(self, mac: MacAddress, done: TxnOp | None = None) -> bool:
        """The outbox's on_confirmed: ready, unless the node moved on (rebooted, deleted).
        True when `done` was committed with the ready transition."""
        try:
            await self.transition(mac, E.HANDED_OFF, reason="scheduler confirmed",
                                  also=(lambda _n, _a: [done]) if done else None)
            return done is not None
        except (InvalidTransition, NotFound) as exc:
            log.info("handoff of %s confirmed, but: %s", mac, exc)
            return False

    async def fail(self, mac: MacAddress | str, reason: str) -> Node:
        return await self.transition(mac, E.FAIL, reason=reason)

    # -- callback deadlines ---------------------------------------------------------------

    def effective(self, node: Node) -> dict[str, SettingValue]:
        """The node's effective settings, from the cached groups."""
        return effective_values(node, self.inventory.cached_groups(), self.defaults)

    def callback_timeout(self, node: Node) -> float:
        value = self.effective(node).get("callback_timeout", DEFAULT_CALLBACK_TIMEOUT)
        return float(value) if isinstance(value, int) and value > 0 \
            else float(DEFAULT_CALLBACK_TIMEOUT)

    async def start(self) -> None:
        """Give a deadline to nodes left provisioning without one (by a version that kept
        deadlines in memory), from their last provisioning event."""
        for node in self.inventory.cached_nodes():
            if node.state is not S.PROVISIONING:
                continue
            if await self.inventory.store.get(keys.deadline(node.mac.value)) is not None:
                continue
            events = await self.inventory.list_events(node.mac)
            since = next((e.at for e in reversed(events) if e.kind == S.PROVISIONING.value),
                         self.clock())
            op = self.deadline_op(node, since + self.callback_timeout(node), None, expect=0)
            with contextlib.suppress(Conflict):  # another appliance gave it one meanwhile
                await self.inventory.store.txn([op])

    async def sweep(self, now: float | None = None) -> list[MacAddress]:
        """Fail provisioning nodes whose callback is overdue; return those this call failed."""
        now = self.clock() if now is None else now
        failed: list[MacAddress] = []
        for kv in (await self.inventory.store.range(keys.DEADLINES)).items:
            deadline, _ = _deadline(kv)
            if deadline <= now and await self._expire(kv, deadline):
                failed.append(MacAddress(kv.key.removeprefix(keys.DEADLINES)))
        return failed

    async def _expire(self, kv: KeyValue, deadline: float) -> bool:
        """Fail the node of an overdue deadline: with the deadline's deletion at the revision
        read, so a node that booted again meanwhile (a new deadline), or that another
        appliance's sweep failed first, is left alone."""
        mac = kv.key.removeprefix(keys.DEADLINES)
        claim = TxnOp(kv.key, None, kv.mod_revision)

        def still_provisioning(node: Node) -> Node:
            if node.state is not S.PROVISIONING:
                raise InvalidTransition(node.name, node.state.value, S.FAILED.value,
                                        (S.PROVISIONING.value + " nodes only",))
            return node

        try:
            await self.transition(mac, E.FAIL, reason="no boot callback in time",
                                  detail={"deadline": deadline}, change=still_provisioning,
                                  also=lambda _n, _a: [claim])
            return True
        except TxnConflict:
            return False  # rewritten or claimed meanwhile: not ours to fail
        except (InvalidTransition, NotFound):
            # It moved on, or was deleted, and left its deadline behind: drop it.
            with contextlib.suppress(Conflict, NotFound):
                await self.inventory.store.delete(kv.key, expect=kv.mod_revision)
            return False

    async def pending(self) -> dict[str, float]:
        """The callback deadlines in the store, by MAC."""
        return {kv.key.removeprefix(keys.DEADLINES): _deadline(kv)[0]
                for kv in (await self.inventory.store.range(keys.DEADLINES)).items}


def _deadline(kv: KeyValue) -> tuple[float, str | None]:
    """A stored deadline: (when, the image version the node was served, if known)."""
    data = json.loads(kv.value)
    version = data.get("version")
    return float(data["deadline"]), str(version) if version is not None else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
