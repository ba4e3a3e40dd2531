"""Stage retries: no node is left behind by a boot that stopped half-way.

A node power-cycled through its power driver (the API's or the CLI's `power cycle`, or a retry
here) records a `power_cycled` event. From then on its boot must pass three stages, each
within its deadline ([retries] in the config, config_retries.py), read off its timeline:

    power_cycled ─ dhcp ─> dhcp_acked ─ script ─> provisioning ─ callback ─> booted

A boot that stops (iPXE gave up while the store was down: "No more network devices", then
"No bootable device"; an image that hung) is power-cycled again through the node's driver,
`max_retries` times, each retry waiting `backoff` times longer, each one a `power_cycled` event
(detail: retry, stage) written *before* the cycle: a retry that cannot be recorded is not made,
it is tried again at the next look. Then the node is failed with the stage named. A node with
the manual driver cannot be power-cycled from here: it is failed at once, and the reason says to
power-cycle it by hand.

The nodes watched are those whose timeline shows a power cycle with its boot not yet through:
found at start from the events of the cached nodes, then kept current by a watch on the event
prefix. The decision is made on the in-memory timeline and checked against the stored one
before acting.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from provisioner.config_retries import RetrySettings
from provisioner.errors import InvalidTransition, NotFound, PowerError, ProvisionerError
from provisioner.inventory import codec, keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import BootEvent, MacAddress, NodeState, SettingValue
from provisioner.power.base import PowerDriver
from provisioner.power.registry import open_power
from provisioner.store.base import EventType, TxnOp

log = logging.getLogger(__name__)
POWER_CYCLED: Final = "power_cycled"  # the event kind of a power cycle through the driver
#: events that end the watch over a boot: it got through, or someone else decided its fate
_ENDS: Final = frozenset({NodeState.BOOTED, NodeState.READY, NodeState.FAILED,
                          NodeState.REGISTERED, NodeState.RETIRED, NodeState.DRAINING})
_NOT_WATCHED: Final = frozenset({NodeState.DISCOVERED, NodeState.RETIRED})


class Stage(enum.StrEnum):
    DHCP = "dhcp"  # from the power cycle to a DHCP ACK
    SCRIPT = "script"  # from the ACK to the boot script fetch
    CALLBACK = "callback"  # from the boot script to the callback of the booted node


_WANTED: Final = {Stage.DHCP: "DHCP lease", Stage.SCRIPT: "boot script fetch",
                  Stage.CALLBACK: "boot callback"}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A boot under way: the stage it waits to pass, since when, after how many retries."""

    stage: Stage
    since: float
    retries: int


def power_cycled(mac: MacAddress, at: float, *, by: str, retry: int = 0,
                 stage: Stage | None = None) -> BootEvent:
    """The event a power cycle through the node's driver leaves on its timeline."""
    detail: dict[str, object] = {"by": by}
    if retry:
        detail |= {"retry": retry, "stage": str(stage)}
    return BootEvent(mac, POWER_CYCLED, at, detail)


def waiting(events: Sequence[BootEvent]) -> Waiting | None:
    """Where the boot since the last power cycle stands; None when there was none or it is
    over (through, failed, reset by an operator)."""
    ordered = sorted(events, key=lambda e: e.at)
    starts = [i for i, e in enumerate(ordered) if e.kind == POWER_CYCLED]
    if not starts:
        return None
    cycle = ordered[starts[-1]]
    retry = cycle.detail.get("retry", 0)
    state = Waiting(Stage.DHCP, cycle.at, retry if isinstance(retry, int) else 0)
    for event in ordered[starts[-1] + 1:]:
        if event.kind in _ENDS and "from" in event.detail:
            return None
        if event.kind == "dhcp_acked" and state.stage is Stage.DHCP:
            state = Waiting(Stage.SCRIPT, event.at, state.retries)
        elif event.kind == NodeState.PROVISIONING and "from" in event.detail:
            state = Waiting(Stage.CALLBACK, event.at, state.retries)  # the ACK may be unrecorded
    return state


def deadline(settings: RetrySettings, state: Waiting) -> float:
    """Seconds the stage may take: its deadline, times `backoff` for every retry so far."""
    base = {Stage.DHCP: settings.dhcp_deadline, Stage.SCRIPT: settings.script_deadline,
            Stage.CALLBACK: settings.callback_deadline}[state.stage]
    return base * settings.backoff ** state.retries


def overdue(settings: RetrySettings, state: Waiting, now: float) -> bool:
    return now - state.since >= deadline(settings, state)


def stalled(state: Waiting, settings: RetrySettings) -> str:
    """What the failure reason says: the stage, and what never came."""
    return (f"boot stalled at stage {state.stage}: no {_WANTED[state.stage]} within "
            f"{deadline(settings, state):.0f} s after {state.retries} retr"
            f"{'y' if state.retries == 1 else 'ies'}")


Opener = Callable[[Mapping[str, SettingValue], str], PowerDriver]


def _open(settings: Mapping[str, SettingValue], node: str) -> PowerDriver:
    return open_power(settings, node=node)


class BootRetries:
    """The supervised task: `run()` watches the event prefix and looks every `interval`."""

    def __init__(self, inventory: Inventory, lifecycle: Lifecycle, settings: RetrySettings,
                 *, clock: Callable[[], float] = time.time, opener: Opener = _open,
                 fence: Callable[[], TxnOp] | None = None) -> None:
        """`fence`: with several heads, the leader's fencing token (ha/election.py): a retry
        is recorded, and so made, only while this head leads."""
        self.inventory, self.lifecycle, self.settings = inventory, lifecycle, settings
        self.clock, self.opener, self.fence = clock, opener, fence
        #: mac -> its timeline, for the nodes whose boot is watched
        self.watched: dict[str, list[BootEvent]] = {}

    async def run(self) -> None:
        revision = (await self.inventory.store.status()).revision
        await self.scan()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(revision + 1))
            group.create_task(self._look_every())

    async def scan(self) -> None:
        """Find the boots under way from the stored timelines (at start, and after a fault)."""
        self.watched.clear()
        for node in self.inventory.cached_nodes():
            if node.state not in _NOT_WATCHED:
                events = await self.inventory.list_events(node.mac)
                if waiting(events) is not None:
                    self.watched[node.mac.value] = events

    def saw(self, event: BootEvent) -> None:
        """One new event from the watch: a power cycle starts watching its node."""
        mac = event.mac.value
        if event.kind == POWER_CYCLED:
            self.watched.setdefault(mac, [])
        if mac in self.watched:
            self.watched[mac].append(event)

    async def _follow(self, start: int) -> None:
        async for change in self.inventory.store.watch(keys.EVENTS, start):
            if change.type is EventType.PUT:
                try:
                    self.saw(codec.decode_event(change.value))
                except ProvisionerError as exc:
                    log.warning("retries: skipping unreadable event %s: %s", change.key, exc)

    async def _look_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            await self.look()

    async def look(self) -> list[MacAddress]:
        """Retry or fail every watched boot past its stage deadline; the nodes acted on."""
        now, acted = self.clock(), []
        for mac, events in list(self.watched.items()):
            state = waiting(events)
            if state is None:
                del self.watched[mac]
            elif overdue(self.settings, state, now):
                try:
                    if await self._act(MacAddress(mac)):
                        acted.append(MacAddress(mac))
                except ProvisionerError as exc:  # the store is down: the next look tries again
                    log.warning("retries: node %s: %s", mac, exc)
        return acted

    async def _act(self, mac: MacAddress) -> bool:
        events = self.watched[mac.value] = await self.inventory.list_events(mac)
        state, now = waiting(events), self.clock()
        if state is None:
            del self.watched[mac.value]  # the stored timeline knows better: it is through
            return False
        if not overdue(self.settings, state, now):
            return False
        node = self.inventory.node_by_mac(mac)
        if node is None:
            del self.watched[mac.value]
            return False
        settings = self.lifecycle.effective(node)
        if settings.get("power_driver") == "manual":
            return await self._fail(mac, f"{stalled(state, self.settings)}; power_driver is "
                                    "manual: power-cycle it by hand")
        if state.retries >= self.settings.max_retries:
            return await self._fail(mac, stalled(state, self.settings))
        event = power_cycled(mac, now, by="retry", retry=state.retries + 1, stage=state.stage)
        # Recorded first: an unrecorded retry is not made (nor one a deposed leader records).
        await self.inventory.add_event(event, fence=self.fence() if self.fence else None)
        events.append(event)
        log.warning("node %s: no %s within %.0f s of its %s; power-cycling it again (retry "
                    "%d of %d)", node.name, _WANTED[state.stage], now - state.since,
                    "power cycle" if state.stage is Stage.DHCP else "last step",
                    state.retries + 1, self.settings.max_retries)
        try:
            await self.opener(settings, node.name).cycle()
        except PowerError as exc:
            return await self._fail(mac, f"{stalled(state, self.settings)}; the retry's power "
                                    f"cycle failed: {exc}")
        return True

    async def _fail(self, mac: MacAddress, reason: str) -> bool:
        self.watched.pop(mac.value, None)
        try:
            await self.lifecycle.fail(mac, reason)
        except (InvalidTransition, NotFound):
            return False  # failed, retired or deleted meanwhile: nothing left to do
        log.warning("node %s: %s; it is failed", mac, reason)
        return True
