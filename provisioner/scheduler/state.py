"""The scheduler's state: nodes and jobs, what each REST call and the dispatcher do to them.

Records live in the store under /scheduler/v1/ (records.py: cached, compare-and-swap writes).
Reads come from the cache loaded at start, so a registration costs one store write and no
scan; an unchanged registration writes nothing. An agent's poll updates `last_seen` in memory
only: polls every few seconds from every node must not become store writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence

from provisioner.errors import Conflict, NotFound, ValidationError
from provisioner.handoff.agent import agent_matches
from provisioner.metrics import registry
from provisioner.scheduler import dispatcher
from provisioner.scheduler.models import (
    JOB_ID,
    OUTPUT_TAIL,
    Job,
    JobState,
    SchedNode,
    WorkerState,
    new_job,
    new_node,
)
from provisioner.scheduler.records import RETRIES, Records
from provisioner.store.base import KeyValueStore

DAY = 86400.0
MAX_HANDED = 65536


class SchedulerState:
    def __init__(self, store: KeyValueStore, *, clock: Callable[[], float] = time.time,
                 node_timeout: float = 300.0, walltime_grace: float = 30.0) -> None:
        self.records = Records(store)
        self.nodes = self.records.nodes
        self.jobs = self.records.jobs
        self.clock = clock
        self.node_timeout = node_timeout
        self.walltime_grace = walltime_grace
        self.seen: dict[str, float] = {}  # last poll per node, in memory only
        #: cancelled jobs that agents still run, by node; in memory: after a scheduler restart
        #: such a job runs on until its walltime, as the agent enforces that by itself
        self.kills: dict[str, list[str]] = {}
        self.changed = asyncio.Event()  # wakes the dispatcher loop
        #: when each node was handed over by a boot and its agent has not polled since: the
        #: handoff latency histogram; in memory, at most MAX_HANDED nodes (oldest forgotten)
        self.handed: dict[str, float] = {}

    async def load(self) -> None:
        await self.records.load()

    # -- reads -----------------------------------------------------------------------------

    def node(self, name: str) -> SchedNode:
        if name not in self.nodes:
            raise NotFound(f"no node {name!r} in the scheduler; see `provisioner scheduler nodes`")
        node = self.nodes[name][0]
        return dataclasses.replace(node, last_seen=max(node.last_seen, self.seen.get(name, 0.0)))

    def node_list(self) -> list[SchedNode]:
        return [self.node(name) for name in sorted(self.nodes)]

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id}; see `provisioner scheduler jobs`")
        return self.jobs[job_id][0]

    def job_list(self, state: JobState | None = None) -> list[Job]:
        if state is not None and not state.finished:
            return sorted((j for j in self.jobs.active.values() if j.state is state),
                          key=_submitted)
        jobs = (j for j, _ in self.jobs.values())
        return sorted((j for j in jobs if state is None or j.state is state), key=_submitted)

    async def prune(self, now: float, *, keep: int, days: float) -> int:
        """Forget finished jobs: those that ended more than `days` ago, and all but the
        newest `keep` of the rest. Unfinished jobs are never touched. The number forgotten."""
        finished = sorted((j for j, _ in self.jobs.values() if j.state.finished),
                          key=lambda j: (j.end_time, j.seq), reverse=True)
        cutoff = now - days * DAY
        stale = [j.id for i, j in enumerate(finished) if i >= keep or j.end_time < cutoff]
        forgotten = 0
        for job_id in stale:
            forgotten += await self.records.forget_job(job_id)
        return forgotten

    def has_pending(self) -> bool:
        return bool(self.jobs.pending)

    def running(self) -> list[Job]:
        return self.job_list(JobState.RUNNING)

    # -- nodes -----------------------------------------------------------------------------

    async def register(self, name: str, *, cpus: int, memory_mib: int,
                       features: Sequence[str] = (), partition: str = "", mac: str = "",
                       agent_hash: str = "") -> SchedNode:
        """Add or update a node. The same registration twice writes nothing the second time.
        An `agent_hash` (a boot's handoff) replaces the node's agent credential; without one
        (a registration by hand) the node keeps the credential it has."""
        fresh = new_node(name, cpus, memory_mib, features=features, partition=partition,
                         mac=mac, now=self.clock(), agent_hash=agent_hash)

        def change(cur: SchedNode | None) -> SchedNode:
            if cur is None:
                return fresh
            # An operator's drain survives a reboot; a node that was down is back.
            state = WorkerState.IDLE if cur.state is WorkerState.DOWN else cur.state
            return dataclasses.replace(fresh, state=state, reason=cur.reason,
                                       registered=cur.registered, last_seen=cur.last_seen,
                                       agent_hash=agent_hash or cur.agent_hash)

        node = await self.records.node(name, change)
        if agent_hash:
            self._handed_over(name)
        if self.has_pending():  # a new node only matters to the dispatcher when jobs wait
            self.changed.set()
        return node

    def _handed_over(self, name: str) -> None:
        self.handed.pop(name, None)
        if len(self.handed) >= MAX_HANDED:
            self.handed.pop(next(iter(self.handed)))
        self.handed[name] = self.clock()

    async def drain(self, name: str, reason: str) -> SchedNode:
        def change(cur: SchedNode | None) -> SchedNode:
            cur = self._existing(name, cur)
            if cur.state in (WorkerState.DRAINING, WorkerState.DRAINED) and cur.reason == reason:
                return cur
            busy = any(j.node == name for j in self.running())
            state = WorkerState.DRAINING if busy else WorkerState.DRAINED
            return dataclasses.replace(cur, state=state, reason=reason)

        if not reason.strip():
            raise ValidationError("reason", "say why the node is drained (shown in `nodes`)")
        return await self.records.node(name, change)

    async def resume(self, name: str) -> SchedNode:
        def change(cur: SchedNode | None) -> SchedNode:
            return dataclasses.replace(self._existing(name, cur), state=WorkerState.IDLE, reason="")

        node = await self.records.node(name, change)
        self.changed.set()
        return node

    async def set_node_state(self, name: str, state: WorkerState, reason: str = "") -> SchedNode:
        def change(cur: SchedNode | None) -> SchedNode:
            return dataclasses.replace(self._existing(name, cur), state=state, reason=reason)

        return await self.records.node(name, change)

    # -- the node agent's credential -------------------------------------------------------

    def agent_for_node(self, name: str, token: str) -> bool:
        """Whether `token` is the agent credential of node `name` (False for no such node)."""
        entry = self.nodes.get(name)
        return entry is not None and agent_matches(entry[0].agent_hash, token)

    def agent_for_job(self, job_id: str, token: str) -> bool:
        """Whether `token` is the agent credential of the node the job was started on (False
        for no such job, or one not started on any node)."""
        entry = self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        return entry is not None and bool(entry[0].node) \
            and self.agent_for_node(entry[0].node, token)

    def _existing(self, name: str, cur: SchedNode | None) -> SchedNode:
        if cur is None:
            raise NotFound(f"no node {name!r} in the scheduler; see `provisioner scheduler nodes`")
        return cur

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, *, cpus: int, memory_mib: int, walltime: int, priority: int = 0,
                     user: str = "root", command: str = "", script: str = "") -> Job:
        for _ in range(RETRIES):
            # 64 random bits: an id says nothing about the jobs before or after it.
            job = new_job(secrets.token_hex(8), cpus=cpus, memory_mib=memory_mib,
                          walltime=walltime, priority=priority, user=user, command=command,
                          script=script, now=self.clock(), seq=self.jobs.last_seq + 1)
            if await self.records.create_job(job):
                self.changed.set()
                return job
        raise Conflict("could not take a job id; another writer is submitting; retry")

    async def cancel(self, job_id: str) -> Job:
        def change(cur: Job | None) -> Job:
            cur = self._existing_job(job_id, cur)
            if cur.state.finished:
                return cur
            return dataclasses.replace(cur, state=JobState.CANCELLED, end_time=self.clock())

        before = self.job(job_id) if job_id in self.jobs else None
        job = await self.records.job(job_id, change)
        if before is not None and before.state is JobState.RUNNING and before.delivered:
            # Its agent runs it: the node's next poll answers with the cancelled job (KILL).
            self.kills.setdefault(before.node, []).append(job_id)
        self.changed.set()
        return job

    async def poll(self, name: str) -> Job | None:
        """The agent on `name` asks for work: a cancelled job of its own to kill, else its next
        job not yet handed over, else None."""
        node = self.node(name)
        self.seen[name] = self.clock()
        handed = self.handed.pop(name, None)
        if handed is not None:
            registry.HANDOFF_READY.observe(max(0.0, self.seen[name] - handed))
        if node.state is WorkerState.DOWN:
            await self.set_node_state(name, WorkerState.IDLE)
            self.changed.set()
        if self.kills.get(name):
            return self.job(self.kills[name].pop(0))
        waiting = [j.id for j in self.running() if j.node == name and not j.delivered]
        if waiting:
            job_id = waiting[0]

            def change(cur: Job | None) -> Job:
                return dataclasses.replace(self._existing_job(job_id, cur), delivered=True)

            return await self.records.job(job_id, change)
        return None

    async def done(self, job_id: str, exit_code: int, output: str) -> Job:
        """The agent reports the end of a job. Reporting twice changes nothing."""
        def change(cur: Job | None) -> Job:
            cur = self._existing_job(job_id, cur)
            if cur.state is not JobState.RUNNING:
                return cur
            state = JobState.COMPLETED if exit_code == 0 else JobState.FAILED
            return dataclasses.replace(cur, state=state, exit_code=exit_code,
                                       output=output[-OUTPUT_TAIL:], end_time=self.clock())

        job = await self.records.job(job_id, change)
        self.changed.set()
        return job

    def _existing_job(self, job_id: str, cur: Job | None) -> Job:
        if cur is None:
            raise NotFound(f"no job {job_id}; see `provisioner scheduler jobs`")
        return cur

    # -- the dispatcher's turn -------------------------------------------------------------

    async def dispatch(self, now: float) -> dispatcher.Plan:
        """Start what the dispatcher plans, drain idle draining nodes, end overdue jobs."""
        nodes = [n for n, _ in self.nodes.values()]
        running = self.running()
        pending = self.job_list(JobState.PENDING)
        plan = dispatcher.schedule(nodes, pending, running, now) if pending else dispatcher.Plan()
        for a in plan.assignments:
            await self._start(a, now)
        for name in dispatcher.settle(nodes, running):
            await self.records.node(name, _drained)
        for job in running:
            if now > job.expected_end() + self.walltime_grace:
                await self._finish(job.id, JobState.TIMEOUT, now)
        for name in self._silent(now):
            await self.set_node_state(name, WorkerState.DOWN, "agent stopped polling")
        for job_id in plan.unfit:
            await self._mark_unfit(job_id)
        return plan

    def _silent(self, now: float) -> list[str]:
        """Idle nodes whose agent polled once and then stopped (never-polled nodes, e.g. ones
        without an agent, are not judged)."""
        return [name for name, seen in self.seen.items() if now - seen > self.node_timeout
                and name in self.nodes and self.nodes[name][0].state is WorkerState.IDLE]

    async def _start(self, a: dispatcher.Assignment, now: float) -> None:
        def change(cur: Job | None) -> Job:
            cur = self._existing_job(a.job, cur)
            if cur.state is not JobState.PENDING:
                return cur
            return dataclasses.replace(cur, state=JobState.RUNNING, node=a.node,
                                       start_time=now, reason="")

        await self.records.job(a.job, change)

    async def _finish(self, job_id: str, state: JobState, now: float) -> None:
        def change(cur: Job | None) -> Job:
            cur = self._existing_job(job_id, cur)
            if cur.state.finished:
                return cur
            return dataclasses.replace(cur, state=state, end_time=now)

        await self.records.job(job_id, change)

    async def _mark_unfit(self, job_id: str) -> None:
        reason = "no schedulable node has enough CPUs and memory"

        def change(cur: Job | None) -> Job:
            return dataclasses.replace(self._existing_job(job_id, cur), reason=reason)

        if self.job(job_id).reason != reason:
            await self.records.job(job_id, change)


def _submitted(job: Job) -> tuple[int, str]:
    return (job.seq, job.id)


def _drained(cur: SchedNode | None) -> SchedNode:
    if cur is None:
        raise NotFound("the draining node was removed")
    if cur.state is not WorkerState.DRAINING:
        return cur
    return dataclasses.replace(cur, state=WorkerState.DRAINED)
