"""Rolling reimage: move nodes to another image in waves without losing the cluster.

For each wave of N nodes, at the same time, for each node:

    drain in the scheduler -> wait until it runs no job (or --force) -> set its image, state
    reimaging -> power-cycle -> wait for the callback from the new image version -> wait for
    the scheduler to confirm it (ready) -> resume it in the scheduler

A node that fails (power error, timeout, wrong version reported, boot failed) goes to `failed`
and stays drained: a broken node must not get jobs. When K nodes have failed, no further node
starts; nodes already past their power-cycle finish. The rollout's status is written to the
store under keys.reimage(ID) at every step (nodes/progress.py), so `node reimage --status` can
show it while it runs and afterwards. Dependencies are injected, so tests drive it with a memory
store.

One rollout runs at a time on a store: it holds the store lock LOCK (inventory/locks.py), taken
at start, renewed by a supervised task while it runs and checked before every wave, released at
the end; a second rollout, from this appliance, another one or the CLI, is refused while it is
held. A rollout the appliance runs (`resumable`) that is cut short by a stop or a crash stays
"running" in the store; `resume(ID)` takes it up again once its lock is free (at once after a
stop, after the lock's expiry after a crash), at the first wave not finished: nodes that ended
(done, failed, skipped) are not touched again, a node that was waiting for its callback goes on
waiting for it, the others start over (a node already set reimaging is power-cycled again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from provisioner.errors import HandoffError, NotFound, PowerError, ProvisionerError
from provisioner.inventory import keys
from provisioner.inventory.locks import LockLost, StoreLock
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress, Node, NodeEvent, NodeState
from provisioner.nodes.progress import (
    FINISHED,
    NodeProgress,
    Progress,
    RolloutRequest,
    RolloutStatus,
    Step,
    load_status,
    new_id,
    waves,
)
from provisioner.power.base import OneTimeBoot, PowerDriver
from provisioner.runtime import supervisor
from provisioner.store.base import TxnConflict, TxnOp

__all__ = ["LOCK", "LOCK_TTL", "NodeFailed", "Progress", "Rollout", "RolloutRequest",
           "RolloutStatus", "Step", "check_event", "load_status", "owner_id", "waves"]

log = logging.getLogger(__name__)
S = NodeState
E = NodeEvent
LOCK = "reimage"  # one lock for every rollout: the waves of two would drain too many nodes
LOCK_TTL = 30.0  # seconds a rollout's lock outlives its last renewal (a crashed holder)


def owner_id(name: str = "") -> str:
    """Who holds a lock or leads an election, for the message of whoever is refused it and for
    `provisioner heads`: the head's name (default: the host's), process, and a random part
    (two rollouts in one process are two owners)."""
    return f"{name or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


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


class NodeFailed(ProvisionerError):
    """One node of a rollout failed; the message says why and what to look at."""


class Rollout:
    """Runs one RolloutRequest; see the module docstring for the steps."""

    def __init__(self, inventory: Inventory, states: States, drains: DrainControl,
                 power_for: Callable[[Node], Awaitable[PowerDriver]], *,
                 on_progress: Callable[[Progress], None] | None = None,
                 clock: Callable[[], float] = time.time, poll: float = 1.0,
                 resumable: bool = False, lock_ttl: float = LOCK_TTL) -> None:
        self.inventory, self.states, self.drains = inventory, states, drains
        self.power_for, self.on_progress = power_for, on_progress
        self.clock, self.poll = clock, poll
        self.resumable = resumable
        self.lock = StoreLock(inventory.store, LOCK, owner_id(), ttl=lock_ttl, clock=clock)
        self.status: RolloutStatus | None = None
        self._plan: list[list[str]] = []
        self._lost: LockLost | None = None

    async def run(self, request: RolloutRequest) -> RolloutStatus:
        """Start and execute: returns when every node is done, failed or skipped."""
        await self.start(request)
        return await self.execute(request)

    async def start(self, request: RolloutRequest) -> RolloutStatus:
        """Check the nodes, take the lock, plan the waves and save the status (state
        "running"). Nothing has changed on any node yet; an API can return the id here and
        `execute` in a task. LockHeld when another rollout runs."""
        if not request.nodes:
            raise NotFound("no nodes to reimage; name them, e.g. `node reimage n1 n2 --image X`")
        found = [(await self.inventory.get_node(ref)).value for ref in request.nodes]
        names = list(dict.fromkeys(n.name for n in found))
        await self.lock.acquire()
        status = self.status = RolloutStatus(
            id=new_id(self.clock()), image=request.image, version=request.version,
            wave=request.wave, max_failures=request.max_failures, force=request.force,
            started=self.clock(), timeout=request.timeout, idle_timeout=request.idle_timeout,
            resumable=self.resumable)
        self._plan = waves(names, request.wave)
        for number, wave in enumerate(self._plan, 1):
            for name in wave:
                status.nodes[name] = NodeProgress(name, wave=number)
        try:
            await self._emit(None, "started", f"reimage {len(names)} node(s) to {request.image} "
                             f"in {len(self._plan)} wave(s) of {max(1, request.wave)}; "
                             f"rollout {status.id}")
        except BaseException:
            await asyncio.shield(self.lock.release())
            raise
        return status

    async def resume(self, rollout_id: str) -> RolloutStatus:
        """Take up a rollout left running (see the module docstring); LockHeld while its
        previous runner's lock has not expired, or another rollout runs."""
        await self.lock.acquire()
        try:
            status = self.status = await load_status(self.inventory, rollout_id)
        except BaseException:
            await asyncio.shield(self.lock.release())
            raise
        if status.state in FINISHED:  # its runner finished it before letting the lock go
            await self.lock.release()
            return status
        self._plan = status.plan()
        await self._emit(None, "resumed", f"rollout {status.id} resumed at wave "
                         f"{status.waves_done + 1}/{len(self._plan)}")
        return await self.execute(status.request())

    async def execute(self, request: RolloutRequest) -> RolloutStatus:
        status = self._status()
        renewer = supervisor.ambient().spawn(f"reimage {status.id} lock", self._renew)
        try:
            for number, wave in enumerate(self._plan, 1):
                if number <= status.waves_done:
                    continue  # finished before a restart
                if status.failures >= request.max_failures:
                    break
                if self._lost is not None:
                    raise self._lost
                await self._emit(None, "wave", f"wave {number}/{len(self._plan)}: "
                                 f"{', '.join(wave)}")
                await asyncio.gather(*(self._one(name, request) for name in wave))
                status.waves_done = number
                await self._save()
            return await self._finish(request)
        except asyncio.CancelledError:
            # Ctrl-C or a stopped service: say so in the store, where --status reads it. The
            # appliance's own rollouts stay "running": the next start resumes them.
            if not self.resumable:
                status.state, status.finished = "interrupted", self.clock()
                await asyncio.shield(self._save())
            raise
        finally:
            await asyncio.shield(self._let_go(renewer))

    async def _let_go(self, renewer: supervisor.Supervised) -> None:
        await renewer.stop()
        await self.lock.release()

    async def _renew(self) -> None:
        """The lock's renewal, while the rollout runs (a supervised task)."""
        while True:
            await asyncio.sleep(self.lock.ttl / 3)
            try:
                await self.lock.renew()
            except LockLost as exc:
                log.error("reimage %s: %s", self._status().id, exc)
                self._lost = exc
                return
            except ProvisionerError as exc:  # the store is away: the lock lasts its ttl
                log.warning("reimage %s: could not renew its lock: %s", self._status().id, exc)

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
        if progress.step in (Step.DONE, Step.FAILED, Step.SKIPPED):
            return  # it ended before a restart
        waiting = progress.step is Step.WAITING_CALLBACK and progress.started is not None
        progress.started = progress.started if waiting else self.clock()
        try:
            if waiting:  # power-cycled before a restart: its callback may still come
                node = (await self.inventory.get_node(name)).value
                finished = await self._settle(node, progress.started or 0.0, request)
            else:
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
        if node.state not in (S.REIMAGING, S.PROVISIONING) or node.image != request.image:
            # (else it was set reimaging before a restart: power-cycle it again)
            node = await self.states.transition(
                node.mac, E.REIMAGE, reason=f"reimage to {request.image}",
                detail={"image": request.image, "version": request.version},
                change=lambda n: n.with_changes(image=request.image))
        # Fenced by the lock: a runner whose lock was taken over (it paused past its expiry,
        # and a resumer took the rollout up) stops here instead of cycling the node twice.
        await self._emit(node.name, Step.POWER_CYCLE, "power-cycling", fenced=True)
        try:
            driver = await self.power_for(node)
            if isinstance(driver, OneTimeBoot):
                await driver.boot_pxe_once()
            await driver.cycle()
        except PowerError as exc:
            await self._fail(node, f"power-cycle failed: {exc}")
        await self._emit(node.name, Step.WAITING_CALLBACK,
                         f"waiting for the callback from {request.image}")
        return await self._settle(node, since, request)

    async def _settle(self, node: Node, since: float, request: RolloutRequest) -> bool:
        """Wait for the node's callback (after `since`) and ready, then resume it."""
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

    async def _emit(self, node: str | None, step: str, message: str, *,
                    fenced: bool = False) -> None:
        status = self._status()
        if node is not None:
            status.nodes[node].step, status.nodes[node].message = Step(step), message
        event = Progress(self.clock(), node, str(step), message)
        log.info("reimage %s: %s %s: %s", status.id, node or "-", step, message)
        if self.on_progress is not None:
            self.on_progress(event)
        await self._save(fenced=fenced)

    async def _save(self, *, fenced: bool = False) -> None:
        """Write the status; `fenced`: only while the lock is ours (LockLost else)."""
        status = self._status()
        key, value = keys.reimage(status.id), json.dumps(status.to_dict()).encode()
        if not fenced:
            await self.inventory.store.put(key, value)
            return
        try:
            await self.inventory.store.txn([await self.lock.fence(), TxnOp(key, value)])
        except TxnConflict:
            raise LockLost(f"{LOCK} was taken over by another runner; this one "
                           "stops") from None


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
