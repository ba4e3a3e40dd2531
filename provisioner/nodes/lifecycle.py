"""The node state machine: transitions as data, every step an event on the node's timeline.

Rules of this file (h11 `_state.py` style): the legal moves are the table `TRANSITIONS`, read by
`check_transition` and nothing else; a move that is not in the table raises InvalidTransition
naming the current state and the states it may go to. Time comes from the injected `clock`, so
tests move it by hand. Every transition is written to the node with compare-and-swap in one txn
with a BootEvent whose kind is the new state and whose detail says where it came from (and with
whatever the caller commits alongside: the boot token's redemption, the audit entry, the
handoff outbox entry or its removal), so a transition is one store round trip.

    discovered ─┐
    registered ─┼─ boot script served ─> provisioning ─ callback ─> booted ─ handoff ─> ready
    failed ─────┘        ^                    │ no callback in time           │
    reimaging ───────────┘                    v                               v
                                            failed           draining ─> reimaging
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

from provisioner.errors import InvalidTransition, NotFound
from provisioner.handoff.base import HandoffNode
from provisioner.inventory.repository import Also, Inventory
from provisioner.nodes.model import BootEvent, MacAddress, Node, NodeState, SettingValue
from provisioner.store.base import TxnOp

log = logging.getLogger(__name__)

S = NodeState
#: state -> the states it may move to. Re-entering provisioning is legal: a node that reboots
#: fetches its boot script again, and that restarts its callback clock.
TRANSITIONS: Final[Mapping[NodeState, frozenset[NodeState]]] = MappingProxyType({
    S.DISCOVERED: frozenset({S.REGISTERED, S.PROVISIONING, S.FAILED, S.RETIRED}),
    S.REGISTERED: frozenset({S.PROVISIONING, S.FAILED, S.RETIRED}),
    S.PROVISIONING: frozenset({S.PROVISIONING, S.BOOTED, S.FAILED, S.REGISTERED}),
    S.BOOTED: frozenset({S.READY, S.PROVISIONING, S.DRAINING, S.FAILED}),
    S.READY: frozenset({S.PROVISIONING, S.DRAINING, S.REIMAGING, S.FAILED}),
    S.DRAINING: frozenset({S.READY, S.PROVISIONING, S.REIMAGING, S.FAILED, S.RETIRED}),
    S.REIMAGING: frozenset({S.PROVISIONING, S.FAILED, S.READY}),
    # A late callback after a timeout proves the node booted after all: accept it.
    S.FAILED: frozenset({S.PROVISIONING, S.BOOTED, S.REGISTERED, S.REIMAGING, S.RETIRED}),
    S.RETIRED: frozenset({S.REGISTERED}),
})
#: states a node may fetch its boot script in (the iPXE route marks it provisioning)
BOOTABLE: Final = frozenset(s for s, targets in TRANSITIONS.items() if S.PROVISIONING in targets)
DEFAULT_CALLBACK_TIMEOUT: Final = 600  # seconds, when no callback_timeout setting applies


def allowed(current: NodeState) -> tuple[str, ...]:
    return tuple(sorted(s.value for s in TRANSITIONS[current]))


def check_transition(node: Node, target: NodeState) -> None:
    """Raise InvalidTransition unless the table allows node.state -> target."""
    if target not in TRANSITIONS[node.state]:
        raise InvalidTransition(node.name, node.state.value, target.value, allowed(node.state))


class Outbox(Protocol):
    """Where booted nodes go: handoff/outbox.py's HandoffQueue (durable, retried)."""

    async def submit(self, node: HandoffNode) -> None: ...

    def entry(self, node: HandoffNode) -> TxnOp: ...

    def accepted(self, node: HandoffNode, revision: int) -> None: ...


Clock = Callable[[], float]


class Lifecycle:
    """Moves nodes through TRANSITIONS and keeps the callback deadlines of provisioning nodes."""

    def __init__(self, inventory: Inventory, handoff: Outbox | None = None,
                 clock: Clock = time.time,
                 defaults: Mapping[str, SettingValue] | None = None) -> None:
        self.inventory = inventory
        self.handoff = handoff
        self.clock = clock
        self.defaults: Mapping[str, SettingValue] = dict(defaults or {})
        #: mac -> (deadline, expected image version) for nodes waiting for their callback
        self._deadlines: dict[str, tuple[float, str | None]] = {}

    # -- the one way a state changes ------------------------------------------------------

    async def transition(self, mac: MacAddress | str, target: NodeState, *, reason: str,
                         detail: Mapping[str, Any] | None = None,
                         change: Callable[[Node], Node] | None = None,
                         also: Also | None = None) -> Node:
        """Move a node to `target` (CAS, retried on races) and record the event, in one txn
        with `also`'s writes (see Inventory.update_node_txn)."""
        return (await self._transition(mac, target, reason=reason, detail=detail,
                                       change=change, also=also))[0]

    async def _transition(self, mac: MacAddress | str, target: NodeState, *, reason: str,
                          detail: Mapping[str, Any] | None = None,
                          change: Callable[[Node], Node] | None = None,
                          also: Also | None = None) -> tuple[Node, list[int]]:
        """`transition`, and the revisions of `also`'s writes."""
        seen: list[NodeState] = []

        def apply(node: Node) -> Node:
            check_transition(node, target)
            seen.append(node.state)
            moved = change(node) if change is not None else node
            return moved.with_changes(state=target)

        def writes(node: Node, attempt: int) -> list[TxnOp]:
            event = BootEvent(node.mac, target.value, self.clock(),
                              {"from": seen[-1].value, "reason": reason, **(detail or {})})
            extra = also(node, attempt) if also is not None else ()
            return [self.inventory.event_op(event, attempt), *extra]

        versioned, revisions = await self.inventory.update_node_txn(str(mac), apply,
                                                                    also=writes)
        if target is not S.PROVISIONING:
            self._deadlines.pop(versioned.value.mac.value, None)
        return versioned.value, revisions[1:]

    # -- the boot path --------------------------------------------------------------------

    async def boot_script_served(self, mac: MacAddress | str, image: str,
                                 version: str) -> Node:
        """The node fetched its iPXE script: it is provisioning and its callback clock runs."""
        node = await self.transition(mac, S.PROVISIONING, reason="boot script served",
                                     detail={"image": image, "version": version})
        self._deadlines[node.mac.value] = (self.clock() + self.callback_timeout(node), version)
        return node

    async def booted(self, mac: MacAddress | str, facts: Mapping[str, Any], version: str,
                      image: str | None = None, *, also: Also | None = None,
                      agent_hash: str = "") -> Node:
        """The node called back from its image: store its facts, hand it to the scheduler.
        The handoff is queued (durably, in the outbox) in the txn of the booted transition,
        with `also`'s writes (the node plane's token redemption and audit entry).
        `agent_hash` (handoff/agent.py) goes to the scheduler with the handoff only."""
        mac = MacAddress(str(mac))
        expected = self._deadlines.get(mac.value, (0.0, None))[1]
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
            return extra + ([handoff.entry(queued[0])] if handoff is not None else [])

        node, revisions = await self._transition(mac, S.BOOTED, reason="callback received",
                                                 detail=detail, change=change, also=writes)
        if handoff is None:
            return await self.transition(node.mac, S.READY,
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
            return await self.transition(mac, S.READY, reason="scheduler confirmed",
                                         also=(lambda _n, _a: [done]) if done else None)
        except InvalidTransition as exc:
            if exc.current == S.READY.value:
                return (await self.inventory.get_node(str(mac))).value
            raise

    async def confirmed(self, mac: MacAddress, done: TxnOp | None = None) -> bool:
        """The outbox's on_confirmed: ready, unless the node moved on (rebooted, deleted).
        True when `done` was committed with the ready transition."""
        try:
            await self.transition(mac, S.READY, reason="scheduler confirmed",
                                  also=(lambda _n, _a: [done]) if done else None)
            return done is not None
        except (InvalidTransition, NotFound) as exc:
            log.info("handoff of %s confirmed, but: %s", mac, exc)
            return False

    async def fail(self, mac: MacAddress | str, reason: str) -> Node:
        return await self.transition(mac, S.FAILED, reason=reason)

    # -- callback deadlines ---------------------------------------------------------------

    def effective(self, node: Node) -> dict[str, SettingValue]:
        layers: list[Mapping[str, SettingValue]] = [self.defaults]
        groups = self.inventory.cached_groups()
        layers += [groups[g].settings for g in node.groups if g in groups]
        layers.append(node.settings)
        return {k: v for layer in layers for k, v in layer.items()}

    def callback_timeout(self, node: Node) -> float:
        value = self.effective(node).get("callback_timeout", DEFAULT_CALLBACK_TIMEOUT)
        return float(value) if isinstance(value, int) and value > 0 \
            else float(DEFAULT_CALLBACK_TIMEOUT)

    async def start(self) -> None:
        """Rebuild deadlines of nodes left provisioning by a previous run, from their events."""
        for node in self.inventory.cached_nodes():
            if node.state is S.PROVISIONING and node.mac.value not in self._deadlines:
                events = await self.inventory.list_events(node.mac)
                since = next((e.at for e in reversed(events) if e.kind == S.PROVISIONING.value),
                             self.clock())
                self._deadlines[node.mac.value] = (since + self.callback_timeout(node), None)

    async def sweep(self, now: float | None = None) -> list[MacAddress]:
        """Fail provisioning nodes whose callback is overdue; return them."""
        now = self.clock() if now is None else now
        failed: list[MacAddress] = []
        for mac, (deadline, _) in sorted(self._deadlines.items()):
            if deadline > now:
                continue
            self._deadlines.pop(mac, None)
            try:
                await self.transition(mac, S.FAILED, reason="no boot callback in time",
                                      detail={"deadline": deadline})
                failed.append(MacAddress(mac))
            except InvalidTransition:
                pass  # it moved on (booted, deleted) while we looked: nothing is overdue
        return failed

    def pending(self) -> dict[str, float]:
        return {mac: deadline for mac, (deadline, _) in self._deadlines.items()}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# -- the timeline -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event, with how long after the first it came and how long the node then stayed."""

    event: BootEvent
    offset: float  # seconds since the first event shown
    duration: float | None  # seconds until the next state change; None for other events
    state: str | None  # the state entered, for state events


def timeline(events: Sequence[BootEvent], now: float) -> list[TimelineEntry]:
    """Events in time order; state events carry the time spent in that state (the current
    state runs until `now`)."""
    ordered = sorted(events, key=lambda e: e.at)
    if not ordered:
        return []
    states = {s.value for s in NodeState}
    changes = [i for i, e in enumerate(ordered) if e.kind in states and "from" in e.detail]
    ends = {i: (ordered[j].at if j is not None else now)
            for i, j in zip(changes, [*changes[1:], None], strict=True)}
    start = ordered[0].at
    return [TimelineEntry(e, round(e.at - start, 6),
                          round(ends[i] - e.at, 6) if i in ends else None,
                          e.kind if i in ends else None)
            for i, e in enumerate(ordered)]


OnConfirmed = Callable[[MacAddress], Awaitable[None]]
