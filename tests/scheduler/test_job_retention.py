"""Finished jobs past `[scheduler] jobs_days` / `jobs_kept` are forgotten, from the store and
the cache; running and pending jobs never are (every store backend)."""

from __future__ import annotations

from provisioner.inventory import keys
from provisioner.scheduler.models import JobState
from provisioner.scheduler.state import DAY, SchedulerState
from provisioner.store.base import KeyValueStore
from tests.scheduler.test_state import Clock


async def _cancelled(state: SchedulerState, clock: Clock, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        job = await state.submit(cpus=1, memory_mib=100, walltime=60, command="true")
        await state.cancel(job.id)
        ids.append(job.id)
        clock.now += 1
    return ids


async def test_old_and_surplus_finished_jobs_are_forgotten(store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=1, memory_mib=1024)
    old = await _cancelled(state, clock, 3)
    clock.now += 10 * DAY
    recent = await _cancelled(state, clock, 4)
    running = await state.submit(cpus=1, memory_mib=100, walltime=60, command="sleep 9")
    await state.dispatch(clock())
    pending = await state.submit(cpus=1, memory_mib=100, walltime=60, command="true")
    assert state.job(running.id).state is JobState.RUNNING

    forgotten = await state.prune(clock(), keep=2, days=5)

    assert forgotten == 3 + 2  # the old ones by age, the two oldest recent ones by count
    kept = {j.id for j in state.job_list()}
    assert kept == {recent[-2], recent[-1], running.id, pending.id}
    for job_id in old + recent[:2]:
        assert await store.get(keys.sched_job(job_id)) is None
    reborn = SchedulerState(store, clock=clock)
    await reborn.load()
    assert {j.id for j in reborn.job_list()} == kept
    assert await state.prune(clock(), keep=2, days=5) == 0  # nothing left to do


async def test_a_second_scheduler_sharing_the_store_keeps_its_view_sound(
        store: KeyValueStore) -> None:
    clock = Clock()
    a = SchedulerState(store, clock=clock)
    old = await _cancelled(a, clock, 2)
    b = SchedulerState(store, clock=clock)
    await b.load()
    clock.now += 40 * DAY
    assert await a.prune(clock(), keep=100, days=30) == 2
    assert await b.prune(clock(), keep=100, days=30) == 0  # already gone: b's cache follows
    assert not {j.id for j in b.job_list()} & set(old)
