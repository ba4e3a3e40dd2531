"""The dispatcher: priority order, EASY backfill that never delays the head job, drain."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.scheduler.dispatcher import Assignment, order, plan, schedule, settle
from provisioner.scheduler.models import Job, JobState, NodeState, SchedNode


def node(name: str, cpus: int = 4, mem: int = 4096, state: NodeState = NodeState.IDLE
         ) -> SchedNode:
    return SchedNode(name=name, cpus=cpus, memory_mib=mem, state=state)


#: random-looking ids whose text order is not their submission order
ID = {n: f"{(n * 0x9E3779B97F4A7C15) % (1 << 64):016x}" for n in range(1, 64)}


def job(n: int, cpus: int = 1, walltime: int = 100, priority: int = 0, mem: int = 512,
        submit: float = 0.0) -> Job:
    """Job number `n`: submitted n-th (seq), at time n unless `submit` says otherwise."""
    return Job(id=ID[n], cpus=cpus, memory_mib=mem, walltime=walltime, priority=priority,
               command="true", submit_time=submit or float(n), seq=n)


def running(j: Job, on: str, start: float = 0.0) -> Job:
    return dataclasses.replace(j, state=JobState.RUNNING, node=on, start_time=start)


def test_higher_priority_starts_first() -> None:
    jobs = [job(1, cpus=4, priority=1), job(2, cpus=4, priority=5)]
    assert plan([node("n1")], jobs, [], 0.0) == [Assignment(ID[2], "n1")]


def test_equal_priority_goes_by_submit_time_then_submission() -> None:
    jobs = [job(2, submit=5.0), job(1, submit=5.0), job(3, submit=1.0)]
    assert ID[2] < ID[1]  # by id job 2 would go first; it was submitted after job 1
    assert [j.id for j in order(jobs)] == [ID[3], ID[1], ID[2]]


def test_finished_and_running_jobs_are_not_planned() -> None:
    done = dataclasses.replace(job(1), state=JobState.COMPLETED)
    assert plan([node("n1")], [done], [], 0.0) == []


def test_backfill_takes_a_short_job_that_ends_before_the_reservation() -> None:
    busy = running(job(9, cpus=2, walltime=100), "n1")
    head, short, long = job(1, cpus=4), job(2, cpus=2, walltime=50), job(3, cpus=2, walltime=500)
    result = schedule([node("n1")], [head, long, short], [busy], 0.0)
    assert result.reservation is not None
    assert (result.reservation.job, result.reservation.start) == (ID[1], 100.0)
    assert result.assignments == [Assignment(ID[2], "n1")]


def test_strict_order_starts_nothing_behind_a_waiting_head() -> None:
    busy = running(job(9, cpus=2, walltime=100), "n1")
    jobs = [job(1, cpus=4), job(2, cpus=2, walltime=50)]
    assert plan([node("n1")], jobs, [busy], 0.0, backfill=False) == []


def test_backfill_may_use_a_node_the_reservation_does_not_need() -> None:
    busy = running(job(9, cpus=4, walltime=100), "n1")
    jobs = [job(1, cpus=4), job(2, cpus=1, walltime=10_000)]
    result = schedule([node("n1"), node("n2", cpus=2)], jobs, [busy], 0.0)
    assert result.reservation is not None and result.reservation.node == "n1"
    assert result.assignments == [Assignment(ID[2], "n2")]


def test_backfill_may_use_what_the_reserved_node_has_beside_the_head() -> None:
    # n1 (8 CPUs) runs 6 until t=100; the head needs 4, so 4 are spare at t=100: one long
    # 2-CPU job fits now and beside the head later; a second would take the head's CPUs.
    busy = running(job(9, cpus=6, walltime=100), "n1")
    jobs = [job(1, cpus=4), job(2, cpus=2, walltime=900), job(3, cpus=1, walltime=900)]
    result = schedule([node("n1", cpus=8)], jobs, [busy], 0.0)
    assert result.assignments == [Assignment(ID[2], "n1")]


def test_a_job_larger_than_every_node_neither_starts_nor_blocks() -> None:
    result = schedule([node("n1")], [job(1, cpus=64), job(2)], [], 0.0)
    assert result.unfit == [ID[1]]
    assert result.reservation is None
    assert result.assignments == [Assignment(ID[2], "n1")]


def test_draining_drained_and_down_nodes_take_no_new_jobs() -> None:
    nodes = [node("a", state=NodeState.DRAINING), node("b", state=NodeState.DRAINED),
             node("c", state=NodeState.DOWN), node("d")]
    assert plan(nodes, [job(1), job(2, cpus=4)], [], 0.0) == [Assignment(ID[1], "d")]


def test_draining_node_becomes_drained_only_when_idle() -> None:
    nodes = [node("a", state=NodeState.DRAINING), node("b", state=NodeState.DRAINING)]
    assert settle(nodes, [running(job(1), "a")]) == ["b"]


def test_best_fit_leaves_the_big_hole_for_the_big_job() -> None:
    jobs = [job(1, cpus=2, priority=9), job(2, cpus=8)]
    assigned = plan([node("big", cpus=8), node("small", cpus=2)], jobs, [], 0.0)
    assert assigned == [Assignment(ID[1], "small"), Assignment(ID[2], "big")]


# -- property: backfill never delays the head job ------------------------------------------

def simulate(nodes: Sequence[SchedNode], jobs: Sequence[Job], *, backfill: bool
             ) -> dict[str, float]:
    """Run the dispatcher at every job end until nothing more starts; every job runs for its
    whole walltime. Returns each started job's start time."""
    now, active, pending = 0.0, list[Job](), list(jobs)
    starts: dict[str, float] = {}
    for _ in range(2 * len(jobs) + 2):
        active = [j for j in active if j.expected_end() > now]
        by_id = {j.id: j for j in pending}
        for a in plan(nodes, pending, active, now, backfill=backfill):
            active.append(running(by_id[a.job], a.node, now))
            starts[a.job] = now
        pending = [j for j in pending if j.id not in starts]
        ends = [j.expected_end() for j in active]
        if not pending or not ends:
            break
        now = min(ends)
    return starts


nodes_st = st.lists(st.builds(node, name=st.just(""), cpus=st.integers(1, 8),
                              mem=st.sampled_from([1024, 2048, 4096])), min_size=1, max_size=3)
jobs_st = st.lists(st.tuples(st.integers(1, 8), st.integers(1, 60), st.integers(0, 3),
                             st.sampled_from([256, 1024, 3000])), min_size=1, max_size=10)


@settings(max_examples=300, deadline=None)
@given(nodes_st, jobs_st)
def test_backfill_never_delays_the_head_job(
        raw_nodes: list[SchedNode], raw_jobs: list[tuple[int, int, int, int]]) -> None:
    nodes = [dataclasses.replace(n, name=f"n{i}") for i, n in enumerate(raw_nodes)]
    jobs = [job(i + 1, cpus=c, walltime=w, priority=p, mem=m)
            for i, (c, w, p, m) in enumerate(raw_jobs)]
    strict = simulate(nodes, jobs, backfill=False)
    easy = simulate(nodes, jobs, backfill=True)
    waiting = [j for j in order(jobs) if j.id in strict and strict[j.id] > 0]
    if waiting:
        head = waiting[0]
        assert easy[head.id] <= strict[head.id]
    # Whatever fits on some node starts eventually, with or without backfill.
    assert set(easy) == set(strict)
