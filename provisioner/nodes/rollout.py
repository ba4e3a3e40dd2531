"""Rolling reimage: move nodes to another image in waves without losing the cluster.

For each wave of N nodes, at the same time, for each node:

    drain in the scheduler -> wait until it runs no job (or --force) -> set its image, state
    reimaging -> power-cycle -> wait for the callback from the new image version -> wait for
    the scheduler to confirm it (ready) -> resume it in the scheduler

A node that fails (power error, timeout, wrong version reported, boot failed) goes to `failed`
and stays drained: a broken node must not get jobs. When K nodes have failed, no further node
starts; nodes already past their power-cycle finish. The rollout's status is written to the
store under keys.reimage(ID) at every step, so `node reimage --status` can show it
while it runs and afterwards. Dependencies are injected, so tests drive it with a memory store.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from provisioner.errors import HandoffError, NotFound, PowerError, ProvisionerError
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress, Node, NodeEvent, NodeState
from provisioner.power.base import OneTimeBoot, PowerDriver

log = logging.getLogger(__name__)
S = NodeState
E = NodeEvent


class DrainControl(Protocol):
    """What a rollout needs of handoff.base.Handoff: take a node out of the scheduler's
    service, see when its jobs have ended, put it back."""

    async def drain(self, name: str, reason: str) -> None: ...

    async def resume(self, name: str) -> None: ...

    async def is_idle(self, name: str) -> bool: ...


class States(Protocol):
    """lifecycle.Lifecycle.transition: the one way a node's state changes (checked, evented)."""

    async def transition(self, mac: MacAddress | str, event: NodeEvent, *, reason: str,
                         detail: Mapping[str, Any] | None = None,
                         change: Callable[[Node], Node] | None = None) -> Node: ...


class Step(enum.StrEnum):
    PENDING = "pending"
    DRAINING = "draining"
    WAITING_IDLE = "waiting_idle"
    POWER_CYCLE = "power_cycle"
    WAITING_CALLBACK = "waiting_callback"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class RolloutRequest:
    """What to reimage and how: the nodes, the image, the wave size and the limits."""

    nodes: tuple[str, ...]
    image: str  # NAME or NAME:VERSION, as the node's `image` will hold it
    version: str | None = None  # the version the callback must report; None: any that boots
    wave: int = 1
    max_failures: int = 1
    force: bool = False
    timeout: float = 900.0  # seconds from power-cycle to ready
    idle_timeout: float = 3600.0  # seconds to wait for running jobs to end


@dataclass
class NodeProgress:
    name: str
    step: Step = Step.PENDING
    message: str = ""
    wave: int = 0
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class Progress:
    """One line of live output: `node` is None for rollout-level news."""

    at: float
    node: str | None
    step: str
    message: str


@dataclass
class RolloutStatus:
    id: str
    image: str
    version: str | None
    wave: int
    max_failures: int
    force: bool
    started: float
    state: str = "running"  # running | succeeded | failed | stopped | interrupted
    finished: float | None = None
    nodes: dict[str, NodeProgress] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(1 for n in self.nodes.values() if n.step is Step.FAILED)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = {k: {**asdict(v), "step": v.step.value} for k, v in self.nodes.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutStatus:
        nodes = {k: NodeProgress(**{**v, "step": Step(v["step"])})
                 for k, v in data.get("nodes", {}).items()}
        fields = {k: v for k, v in data.items() if k != "nodes"}
        return cls(**fields, nodes=nodes)


class NodeFailed(ProvisionerError):
    """One node of a rollout failed; the message says why and what to look at."""


def waves(names: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [list(names[i:i + size]) for i in range(0, len(names), size)]


def new_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(2)


async def load_status(inventory: Inventory, rollout_id: str | None = None) -> RolloutStatus:
    """A rollout's status by id, or the latest one (ids sort by start time)."""
    if rollout_id is not None:
        kv = await inventory.store.get(keys.reimage(rollout_id))
        if kv is None:
            raise NotFound(f"no reimage rollout {rollout_id!r}")
        return RolloutStatus.from_dict(json.loads(kv.value))
    items = (await inventory.store.range(keys.REIMAGE)).items
    if not items:
        raise NotFound("no reimage has run yet; start one with `provisioner node reimage`")
    latest = max(items, key=lambda kv: kv.key)
    return RolloutStatus.from_dict(json.loads(latest.value))


class Rollout:
    """Runs one RolloutRequest; see the module docstring for the steps."""

    def __init__(self, inventory: Inventory, states: States, drains: DrainControl,
                 power_for: Callable[[Node], Awaitable[PowerDriver]], *,
                 on_progress: Callable[[Progress], None] | None = None,
                 clock: Callable[[], float] = time.time, poll: float = 1.0) -> None:
        self.inventory, self.states, self.drains = inventory, states, drains
        self.power_for, self.on_progress = power_for, on_progress
        self.clock, self.poll = clock, poll
        self.status: RolloutStatus | None = None
        self._plan: list[list[str]] = []

    async def run(self, request: RolloutRequest) -> RolloutStatus:
        """Start and execute: returns when every node is done, failed or skipped."""
        await self.start(request)
        return await self.execute(request)

    async def start(self, request: RolloutRequest) -> RolloutStatus:
        """Check the nodes, plan the waves and save the status (state "running"). Nothing has
        changed on any node yet; an API can return the id here and `execute` in a task."""
        if not request.nodes:
            raise NotFound("no nodes to reimage; name them, e.g. `node reimage n1 n2 --image X`")
        found = [(await self.inventory.get_node(ref)).value for ref in request.nodes]
        names = list(dict.fromkeys(n.name for n in found))
        status = self.status = RolloutStatus(
            id=new_id(self.clock()), image=request.image, version=request.version,
            wave=request.wave, max_failures=request.max_failures, force=request.force,
            started=self.clock())
        self._plan = waves(names, request.wave)
        for number, wave in enumerate(self._plan, 1):
            for name in wave:
                status.nodes[name] = NodeProgress(name, wave=number)
        await self._emit(None, "started", f"reimage {len(names)} node(s) to {request.image} in "
                         f"{len(self._plan)} wave(s) of {max(1, request.wave)}; "
                         f"rollout {status.id}")
        return status

    async def execute(self, request: RolloutRequest) -> RolloutStatus:
        status = self._status()
        try:
            for number, wave in enumerate(self._plan, 1):
                if status.failures >= request.max_failures:
                    break
                await self._emit(None, "wave", f"wave {number}/{len(self._plan)}: "
                                 f"{', '.join(wave)}")
                await asyncio.gather(*(self._one(name, request) for name in wave))
        except asyncio.CancelledError:
            # Ctrl-C or a stopped service: say so in the store, where --status reads it.
            status.state, status.finished = "interrupted", self.clock()
            await asyncio.shield(self._save())
            raise
        return await self._finish(request)

    async def _finish(self, request: RolloutRequest) -> RolloutStatus:
        status = self._status()
        for progress in status.nodes.values():
            if progress.step is Step.PENDING:
                progress.step, progress.message = Step.SKIPPED, "not started: rollout stopped"
        done = sum(1 for n in status.nodes.values() if n.step is Step.DONE)
        if status.failures >= request.max_failures:
            status.state = "stopped"
        else:
            status.state = "succeeded" if status.failures == 0 else "failed"
        status.finished = self.clock()
        await self._emit(None, status.state, f"{done} done, {status.failures} failed, "
                         f"{len(status.nodes) - done - status.failures} skipped")
        return status

    async def _one(self, name: str, request: RolloutRequest) -> None:
        progress = self._status().nodes[name]
        progress.started = self.clock()
        try:
            finished = await self._reimage(name, request)
        except ProvisionerError as exc:
            progress.finished = self.clock()
            await self._emit(name, Step.FAILED, str(exc))
            return
        except Exception as exc:  # a bug must fail one node, not orphan the others' tasks
            log.exception("reimage of %s", name)
            progress.finished = self.clock()
            await self._emit(name, Step.FAILED, f"internal error: {exc.__class__.__name__}")
            return
        progress.finished = self.clock()
        if finished:
            await self._emit(name, Step.DONE, f"running {request.image} and resumed")

    async def _reimage(self, name: str, request: RolloutRequest) -> bool:
        """Returns False when the node was skipped (the rollout stopped meanwhile)."""
        node = (await self.inventory.get_node(name)).value
        await self._emit(name, Step.DRAINING, "draining in the scheduler")
        try:
            await self.drains.drain(name, f"reimage to {request.image}")
        except HandoffError as exc:
            raise NodeFailed(f"the scheduler did not drain it: {exc}") from None
        if node.state in (S.READY, S.BOOTED):
            node = await self.states.transition(node.mac, E.DRAIN,
                                                reason=f"reimage to {request.image}")
        if not request.force:
            await self._emit(name, Step.WAITING_IDLE, "waiting for its jobs to end")
            if not await self._wait_idle(name, request.idle_timeout):
                await self._undrain(node)
                raise NodeFailed(f"still running jobs after {request.idle_timeout:g} s; it "
                                 "was resumed untouched (use --force to reimage it anyway)")
        if self._status().failures >= request.max_failures:
            await self._undrain(node)
            await self._emit(name, Step.SKIPPED, "rollout stopped before its power-cycle")
            return False
        return await self._cycle_and_wait(node, request)

    async def _cycle_and_wait(self, node: Node, request: RolloutRequest) -> bool:
        since = self.clock()
        node = await self.states.transition(
            node.mac, E.REIMAGE, reason=f"reimage to {request.image}",
            detail={"image": request.image, "version": request.version},
            change=lambda n: n.with_changes(image=request.image))
        await self._emit(node.name, Step.POWER_CYCLE, "power-cycling")
        try:
            driver = await self.power_for(node)
            if isinstance(driver, OneTimeBoot):
                await driver.boot_pxe_once()
            await driver.cycle()
        except PowerError as exc:
            await self._fail(node, f"power-cycle failed: {exc}")
        await self._emit(node.name, Step.WAITING_CALLBACK,
                         f"waiting for the callback from {request.image}")
        try:
            await self._wait_ready(node, since, request)
        except NodeFailed as exc:
            await self._fail(node, str(exc))
        try:
            await self.drains.resume(node.name)
        except HandoffError as exc:
            raise NodeFailed(f"booted {request.image} but the scheduler did not resume it: "
                             f"{exc}; resume it by hand") from None
        return True

    async def _wait_idle(self, name: str, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await self.drains.is_idle(name):
                    return True
            except HandoffError as exc:
                log.warning("is_idle(%s): %s", name, exc)
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(self.poll)

    async def _wait_ready(self, node: Node, since: float, request: RolloutRequest) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        booted = False
        while loop.time() < deadline:
            for event in await self.inventory.list_events(node.mac):
                if event.at >= since:
                    booted = check_event(event.kind, event.detail, request) or booted
            if booted and (await self.inventory.get_node(node.name)).value.state is S.READY:
                return
            await asyncio.sleep(self.poll)
        what = "the scheduler did not confirm it" if booted else "no callback"
        raise NodeFailed(f"{what} within {request.timeout:g} s of the power-cycle; see "
                         f"`provisioner node events {node.name}` and its console")

    async def _fail(self, node: Node, reason: str) -> None:
        """Mark the node failed (it stays drained) and end its part of the rollout."""
        try:
            await self.states.transition(node.mac, E.FAIL, reason=f"reimage: {reason}")
        except ProvisionerError as exc:  # already failed by the callback timeout sweep
            log.info("%s: not moved to failed: %s", node.name, exc)
        raise NodeFailed(reason)

    async def _undrain(self, node: Node) -> None:
        try:
            await self.drains.resume(node.name)
            current = (await self.inventory.get_node(node.name)).value
            if current.state is S.DRAINING:
                await self.states.transition(node.mac, E.RESUME, reason="reimage skipped")
        except ProvisionerError as exc:
            log.warning("%s: could not undo the drain: %s", node.name, exc)

    def _status(self) -> RolloutStatus:
        assert self.status is not None, "run() sets the status first"
        return self.status

    async def _emit(self, node: str | None, step: str, message: str) -> None:
        status = self._status()
        if node is not None:
            status.nodes[node].step, status.nodes[node].message = Step(step), message
        event = Progress(self.clock(), node, str(step), message)
        log.info("reimage %s: %s %s: %s", status.id, node or "-", step, message)
        if self.on_progress is not None:
            self.on_progress(event)
        await self._save()

    async def _save(self) -> None:
        status = self._status()
        await self.inventory.store.put(keys.reimage(status.id),
                                       json.dumps(status.to_dict()).encode())


def check_event(kind: str, detail: Mapping[str, Any], request: RolloutRequest) -> bool:
    """True for the callback we wait for; raises NodeFailed for one that proves failure."""
    if kind == "failed":
        raise NodeFailed(f"the node failed: {detail.get('reason', 'see its events')}")
    if kind != "booted":
        return False
    version = detail.get("version")
    if request.version is not None and str(version) != request.version:
        raise NodeFailed(f"it booted version {version}, not {request.version}; check the "
                         "image it was served (`provisioner node events`)")
    if detail.get("version_mismatch"):
        raise NodeFailed(f"it booted version {version}, not the {detail.get('expected_version')}"
                         " it was served")
    return True
