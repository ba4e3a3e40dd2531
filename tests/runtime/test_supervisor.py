"""The supervisor restarts a failed task with capped, doubling backoff and says what is down."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from provisioner.runtime import supervisor
from provisioner.runtime.supervisor import Supervisor, TaskStatus


class Flaky:
    """Fails its first `failures` runs, then runs until cancelled; records when each run began."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts: list[float] = []
        self.steady = asyncio.Event()

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            raise RuntimeError(f"fault {len(self.starts)}")
        self.steady.set()
        await asyncio.Event().wait()


async def test_a_failing_task_is_restarted_with_capped_doubling_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(first_delay=0.05, max_delay=0.2)
    flaky = Flaky(failures=5)
    with caplog.at_level(logging.ERROR, logger="provisioner.runtime.supervisor"):
        sup.spawn("flaky", flaky)
        await asyncio.wait_for(flaky.steady.wait(), 5)
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    expected = [0.05, 0.1, 0.2, 0.2, 0.2]  # doubling from first_delay, capped at max_delay
    assert len(gaps) == len(expected)
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay * 0.9 <= gap < delay + 0.15, (gaps, expected)
    failures = [r for r in caplog.records if r.getMessage().startswith("task flaky failed")]
    assert len(failures) == 5
    assert all(r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError)
               for r in failures)
    assert "Traceback" in caplog.text and "RuntimeError: fault 5" in caplog.text
    [state] = sup.states()
    assert (state.name, state.status, state.restarts) == ("flaky", TaskStatus.RUNNING, 5)
    assert state.last_error == "RuntimeError: fault 5" and not state.down
    await sup.close()
    assert sup.states() == []


async def test_a_task_down_is_reported_while_it_waits_to_restart() -> None:
    now = [1_800_000_000.0]
    sup = Supervisor(first_delay=0.3, clock=lambda: now[0])
    flaky = Flaky(failures=1)
    sup.spawn("sweeper", flaky)
    await asyncio.sleep(0.05)
    [down] = sup.down()
    assert (down.name, down.status, down.restarts) == ("sweeper", TaskStatus.RESTARTING, 1)
    assert down.since == now[0] and down.last_error == "RuntimeError: fault 1"
    now[0] += 10
    await asyncio.wait_for(flaky.steady.wait(), 5)
    assert sup.down() == []
    [state] = sup.states()
    assert state.status is TaskStatus.RUNNING and state.since == now[0]
    await sup.close()


async def test_backoff_starts_again_after_a_task_ran_fine_for_a_while(
        caplog: pytest.LogCaptureFixture) -> None:
    """The monotonic clock is moved by hand: each run 'lasts' what the task says."""
    mono = [0.0]
    sup = Supervisor(first_delay=0.01, max_delay=1.0, healthy_after=60.0,
                     monotonic=lambda: mono[0])
    ran = [0.0, 0.0, 0.0, 120.0, 0.0]  # the fourth run is healthy for two minutes, then fails
    done = asyncio.Event()

    async def task() -> None:
        mono[0] += ran.pop(0)
        if not ran:
            done.set()
            await asyncio.Event().wait()
        raise OSError("disk full")

    with caplog.at_level(logging.ERROR, logger="provisioner.runtime.supervisor"):
        sup.spawn("task", task)
        await asyncio.wait_for(done.wait(), 5)
    delays = [r.args[2] for r in caplog.records if isinstance(r.args, tuple)]
    assert delays == [0.01, 0.02, 0.04, 0.01]
    await sup.close()


async def test_a_task_that_returns_is_finished_not_restarted() -> None:
    sup = Supervisor(first_delay=0.01)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    entry = sup.spawn("once", once)
    assert entry.task is not None
    await entry.task
    await asyncio.sleep(0.05)
    assert runs == [1] and entry.status is TaskStatus.FINISHED and sup.down() == []


async def test_names_are_unique_and_the_ambient_supervisor_is_inherited() -> None:
    sup = Supervisor()
    hold = asyncio.Event()
    first = sup.spawn("follower", hold.wait)
    second = sup.spawn("follower", hold.wait)
    assert (first.name, second.name) == ("follower", "follower (2)")
    assert supervisor.current() is None
    undo = supervisor.install(sup)
    try:
        assert supervisor.ambient() is sup
        assert await asyncio.create_task(_ambient()) is sup
    finally:
        undo()
    assert supervisor.current() is None and supervisor.ambient() is not sup
    await sup.close()


async def _ambient() -> Supervisor | None:
    return supervisor.current()
