"""Store-backed scheduler state on every store backend: CAS writes, drain/resume, restarts."""

from __future__ import annotations

import json

import pytest

from provisioner.errors import NotFound, ValidationError
from provisioner.inventory import keys
from provisioner.scheduler.models import JobState, NodeState
from provisioner.scheduler.state import SchedulerState
from provisioner.store.base import KeyValueStore
from tests.scheduler.agents import AgentCredential


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_register_twice_writes_once(store: KeyValueStore) -> None:
    state = SchedulerState(store)
    await state.register("n1", cpus=4, memory_mib=2048, features=["gpu"])
    first = await store.get(keys.sched_node("n1"))
    again = await state.register("n1", cpus=4, memory_mib=2048, features=["gpu"])
    second = await store.get(keys.sched_node("n1"))
    assert first is not None and second is not None
    assert second.mod_revision == first.mod_revision
    assert again.cpus == 4 and again.features == ("gpu",)
    bigger = await state.register("n1", cpus=8, memory_mib=2048, features=["gpu"])
    assert bigger.cpus == 8


async def test_state_survives_a_restart(store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=2, memory_mib=1024)
    job = await state.submit(cpus=1, memory_mib=100, walltime=60, command="true")
    await state.dispatch(clock())
    reborn = SchedulerState(store, clock=clock)
    await reborn.load()
    assert reborn.job(job.id).state is JobState.RUNNING
    assert reborn.job(job.id).node == "n1"
    nxt = await reborn.submit(cpus=1, memory_mib=100, walltime=60, command="true")
    assert nxt.id != job.id and nxt.seq == job.seq + 1  # the order goes on after a restart
    assert [j.id for j in reborn.job_list()] == [job.id, nxt.id]


async def test_a_stale_writer_reapplies_its_change_after_a_conflict(store: KeyValueStore) -> None:
    a, b = SchedulerState(store), SchedulerState(store)
    await a.register("n1", cpus=2, memory_mib=1024)
    await b.load()
    await a.drain("n1", "bad DIMM")
    resumed = await b.register("n1", cpus=4, memory_mib=1024)  # b's cache is stale
    assert resumed.cpus == 4
    assert resumed.state is NodeState.DRAINED  # a's drain was not undone


async def test_drain_waits_for_running_jobs_then_resume(store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=2, memory_mib=1024)
    job = await state.submit(cpus=1, memory_mib=100, walltime=60, command="sleep 1")
    await state.dispatch(clock())
    assert (await state.drain("n1", "maintenance")).state is NodeState.DRAINING
    other = await state.submit(cpus=1, memory_mib=100, walltime=60, command="true")
    await state.dispatch(clock())
    assert state.job(other.id).state is JobState.PENDING  # draining takes no new jobs
    await state.done(job.id, 0, "ok")
    await state.dispatch(clock())
    assert state.node("n1").state is NodeState.DRAINED
    assert (await state.resume("n1")).state is NodeState.IDLE
    await state.dispatch(clock())
    assert state.job(other.id).state is JobState.RUNNING


async def test_poll_hands_each_job_over_once_and_done_is_idempotent(
        store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=2, memory_mib=1024)
    job = await state.submit(cpus=1, memory_mib=100, walltime=60, script="echo hi\n")
    assert await state.poll("n1") is None  # not dispatched yet
    await state.dispatch(clock())
    polled = await state.poll("n1")
    assert polled is not None and polled.id == job.id and polled.delivered
    assert await state.poll("n1") is None
    finished = await state.done(job.id, 3, "x" * 10_000)
    assert finished.state is JobState.FAILED and finished.exit_code == 3
    assert len(finished.output) == 4096
    assert (await state.done(job.id, 0, "")).state is JobState.FAILED


async def test_walltime_overrun_and_silent_nodes(store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock, node_timeout=100, walltime_grace=5)
    await state.register("n1", cpus=1, memory_mib=1024)
    job = await state.submit(cpus=1, memory_mib=100, walltime=10, command="sleep 99")
    await state.dispatch(clock())
    await state.poll("n1")
    clock.now += 16
    await state.dispatch(clock())
    assert state.job(job.id).state is JobState.TIMEOUT
    clock.now += 200
    await state.dispatch(clock())
    assert state.node("n1").state is NodeState.DOWN
    await state.poll("n1")
    assert state.node("n1").state is NodeState.IDLE


async def test_refusals(store: KeyValueStore) -> None:
    state = SchedulerState(store)
    with pytest.raises(NotFound):
        await state.drain("ghost", "x")
    with pytest.raises(ValidationError):
        await state.submit(cpus=1, memory_mib=1, walltime=1, command="a", script="b")
    with pytest.raises(ValidationError):
        await state.register("Bad Name", cpus=1, memory_mib=1)
    with pytest.raises(NotFound):
        await state.cancel("000000000042")
    with pytest.raises(ValidationError, match="not a user name"):
        await state.submit(cpus=1, memory_mib=1, walltime=1, command="a", user="-s")


async def test_cancelling_a_delivered_job_tells_its_node(store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=2, memory_mib=1024)
    handed = await state.submit(cpus=1, memory_mib=1, walltime=60, command="sleep 60")
    waiting = await state.submit(cpus=1, memory_mib=1, walltime=60, command="sleep 60")
    await state.dispatch(clock())
    assert (await state.poll("n1")) == state.job(handed.id)
    await state.cancel(handed.id)
    await state.cancel(waiting.id)  # running but never handed over: nothing to kill
    told = await state.poll("n1")
    assert told is not None and (told.id, told.state) == (handed.id, JobState.CANCELLED)
    assert await state.poll("n1") is None


async def test_registration_wakes_the_dispatcher_only_when_jobs_wait(
        store: KeyValueStore) -> None:
    state = SchedulerState(store)
    await state.register("n1", cpus=1, memory_mib=64)
    assert not state.changed.is_set()  # 200 registrations/s must not each run the dispatcher
    job = await state.submit(cpus=4, memory_mib=1, walltime=9, command="true")
    state.changed.clear()
    await state.register("n2", cpus=4, memory_mib=64)
    assert state.changed.is_set()
    await state.dispatch(0.0)
    assert state.job(job.id).node == "n2" and not state.has_pending()


async def test_the_agent_credential_is_the_nodes_and_a_new_boot_replaces_it(
        store: KeyValueStore) -> None:
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    one, two, later = (AgentCredential.new() for _ in range(3))
    await state.register("n1", cpus=1, memory_mib=64, agent_hash=one.hash)
    await state.register("n2", cpus=1, memory_mib=64, agent_hash=two.hash)
    job = await state.submit(cpus=1, memory_mib=1, walltime=60, command="true", user="ann")
    assert not state.agent_for_job(job.id, one.token)  # pending: on no node yet
    await state.dispatch(clock())
    on, off = (one, two) if state.job(job.id).node == "n1" else (two, one)
    assert state.agent_for_node("n1", one.token) and state.agent_for_node("n2", two.token)
    assert not state.agent_for_node("n1", two.token) and not state.agent_for_node("n1", "")
    assert not state.agent_for_node("ghost", one.token)
    assert state.agent_for_job(job.id, on.token) and not state.agent_for_job(job.id, off.token)
    assert not state.agent_for_job("../n1", on.token)
    # The record in the store holds the hash, never the credential.
    raw = b"".join(kv.value for kv in (await store.range(keys.SCHED_ROOT)).items)
    assert one.hash.encode() in raw and one.token.encode() not in raw
    await state.register("n1", cpus=1, memory_mib=64, agent_hash=later.hash)
    reborn = SchedulerState(store, clock=clock)
    await reborn.load()
    assert reborn.agent_for_node("n1", later.token) and not reborn.agent_for_node("n1", one.token)


async def test_jobs_stored_with_counter_ids_still_load_and_end(store: KeyValueStore) -> None:
    """Jobs written when ids were a zero-padded counter keep their key and their order."""
    clock = Clock()
    state = SchedulerState(store, clock=clock)
    await state.register("n1", cpus=1, memory_mib=64)
    old = {"id": 7, "cpus": 1, "memory_mib": 1, "walltime": 60, "user": "root",
           "command": "true", "state": "running", "node": "n1", "submit_time": 1.0}
    await store.put(keys.sched_job("0000000007"), json.dumps(old).encode())
    await state.load()
    assert state.job("0000000007").seq == 7
    fresh = await state.submit(cpus=1, memory_mib=1, walltime=60, command="x", user="ann")
    assert fresh.seq == 8 and [j.id for j in state.job_list()] == ["0000000007", fresh.id]
    ended = await state.done("0000000007", 0, "ok")
    assert ended.state is JobState.COMPLETED
    stored = await store.get(keys.sched_job("0000000007"))
    assert stored is not None and json.loads(stored.value)["state"] == "completed"
