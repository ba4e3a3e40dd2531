"""Which pending jobs start now: priority order plus EASY backfill. Pure: no IO, `now` passed in.

EASY backfill (Lifka, "The ANL/IBM SP scheduling system", 1995): jobs are taken in priority
order (then submit time, then submission order). Each job that fits on a node now starts. The
first job that does not fit (the head) gets one reservation: the node and the earliest time on
which enough CPUs and memory will be free, assuming running jobs use their whole walltime. A
later job may still start now (backfill) only if it fits now and cannot delay the head: it ends
by the reservation, or it runs on another node, or it fits in what the reserved node has left
over beside the head.
A job larger than every node never starts and takes no reservation (it would block the queue
forever); the service marks it with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from provisioner.scheduler.models import Job, JobState, NodeState, SchedNode


@dataclass(frozen=True, slots=True)
class Assignment:
    job: str
    node: str


@dataclass(frozen=True, slots=True)
class Reservation:
    job: str
    node: str
    start: float


@dataclass
class Plan:
    assignments: list[Assignment] = field(default_factory=list)
    reservation: Reservation | None = None
    unfit: list[str] = field(default_factory=list)  # jobs no node can ever hold


@dataclass
class _Free:
    """A node's free CPUs and memory now, and the ends of the jobs on it (end, cpus, mem)."""

    node: SchedNode
    cpus: int
    mem: int
    ends: list[tuple[float, int, int]]

    def fits(self, job: Job) -> bool:
        return job.cpus <= self.cpus and job.memory_mib <= self.mem

    def take(self, job: Job, end: float) -> None:
        self.cpus -= job.cpus
        self.mem -= job.memory_mib
        self.ends.append((end, job.cpus, job.memory_mib))

    def earliest(self, job: Job, now: float) -> float | None:
        """When this node will have room for `job`, if every job uses its whole walltime."""
        if job.cpus > self.node.cpus or job.memory_mib > self.node.memory_mib:
            return None
        cpus, mem = self.cpus, self.mem
        if job.cpus <= cpus and job.memory_mib <= mem:
            return now
        for end, c, m in sorted(self.ends):
            cpus, mem = cpus + c, mem + m
            if job.cpus <= cpus and job.memory_mib <= mem:
                return max(end, now)
        return None  # unreachable when the node's totals hold the job

    def free_at(self, when: float) -> tuple[int, int]:
        released = [(c, m) for end, c, m in self.ends if end <= when]
        return (self.cpus + sum(c for c, _ in released), self.mem + sum(m for _, m in released))


def order(jobs: Iterable[Job]) -> list[Job]:
    """Pending jobs in dispatch order: higher priority first, then older, then submitted
    first (ids are random: they order nothing)."""
    pending = [j for j in jobs if j.state is JobState.PENDING]
    return sorted(pending, key=lambda j: (-j.priority, j.submit_time, j.seq, j.id))


def plan(nodes: Sequence[SchedNode], jobs: Iterable[Job], running: Iterable[Job],
         now: float, *, backfill: bool = True) -> list[Assignment]:
    """The jobs to start now and where. `backfill=False` is strict priority order."""
    return schedule(nodes, jobs, running, now, backfill=backfill).assignments


def schedule(nodes: Sequence[SchedNode], jobs: Iterable[Job], running: Iterable[Job],
             now: float, *, backfill: bool = True) -> Plan:
    free = _free_nodes(nodes, running)
    result = Plan()
    spare: tuple[int, int] = (0, 0)  # what the reserved node has beside the head at its start
    for job in order(jobs):
        if not any(job.cpus <= f.node.cpus and job.memory_mib <= f.node.memory_mib
                   for f in free):
            result.unfit.append(job.id)
            continue
        res = result.reservation
        target = _best_fit(free, job, now, res, spare)
        if target is not None:
            end = now + job.walltime
            if res is not None and target.node.name == res.node and end > res.start:
                spare = (spare[0] - job.cpus, spare[1] - job.memory_mib)
            target.take(job, end)
            result.assignments.append(Assignment(job.id, target.node.name))
        elif res is None:
            result.reservation, spare = _reserve(free, job, now)
            if not backfill:
                break
    return result


def _free_nodes(nodes: Sequence[SchedNode], running: Iterable[Job]) -> list[_Free]:
    by_name = {n.name: _Free(n, n.cpus, n.memory_mib, []) for n in nodes}
    for job in running:
        slot = by_name.get(job.node)
        if slot is not None:
            slot.take(job, job.expected_end())
    # Draining, drained and down nodes keep their running jobs but take no new ones.
    return [f for f in by_name.values() if f.node.state is NodeState.IDLE]


def _best_fit(free: Sequence[_Free], job: Job, now: float, res: Reservation | None,
              spare: tuple[int, int]) -> _Free | None:
    """The node that fits `job` now with the fewest CPUs left over (keeps big holes for big
    jobs), among those on which it cannot delay the reservation."""
    best: _Free | None = None
    for slot in free:
        if not slot.fits(job) or not _harmless(slot, job, now, res, spare):
            continue
        if best is None or (slot.cpus, slot.mem, slot.node.name) < (
                best.cpus, best.mem, best.node.name):
            best = slot
    return best


def _harmless(slot: _Free, job: Job, now: float, res: Reservation | None,
              spare: tuple[int, int]) -> bool:
    if res is None or slot.node.name != res.node or now + job.walltime <= res.start:
        return True
    return job.cpus <= spare[0] and job.memory_mib <= spare[1]


def _reserve(free: Sequence[_Free], job: Job, now: float) -> tuple[Reservation, tuple[int, int]]:
    starts = [(t, f.node.name, f) for f in free if (t := f.earliest(job, now)) is not None]
    start, name, slot = min(starts, key=lambda s: (s[0], s[1]))
    cpus, mem = slot.free_at(start)
    return Reservation(job.id, name, start), (cpus - job.cpus, mem - job.memory_mib)


def settle(nodes: Iterable[SchedNode], running: Iterable[Job]) -> list[str]:
    """Draining nodes with no running job: they become drained."""
    busy = {j.node for j in running}
    return [n.name for n in nodes if n.state is NodeState.DRAINING and n.name not in busy]
