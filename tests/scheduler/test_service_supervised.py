"""The scheduler's dispatcher loop is supervised: a fault it did not expect is logged with its
traceback and the loop starts again, so jobs keep being dispatched."""

from __future__ import annotations

import asyncio
import logging

import pytest

from provisioner.scheduler.dispatcher import Plan
from provisioner.scheduler.service import SchedulerServer


async def test_the_dispatcher_loop_is_restarted_after_an_unexpected_error(
        sched: SchedulerServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    dispatch = sched.state.dispatch
    calls: list[float] = []
    again = asyncio.Event()

    async def faulty(now: float) -> Plan:
        calls.append(now)
        if len(calls) == 1:
            raise AttributeError("a bug in the dispatcher")
        again.set()
        return await dispatch(now)

    monkeypatch.setattr(sched.state, "dispatch", faulty)
    with caplog.at_level(logging.ERROR, logger="provisioner.runtime.supervisor"):
        await asyncio.wait_for(again.wait(), 5)
    states = {s.name: s for s in sched.supervisor.states()}
    assert set(states) == {"scheduler dispatcher", "scheduler job retention"}
    state = states["scheduler dispatcher"]
    assert state.restarts == 1
    assert state.last_error == "AttributeError: a bug in the dispatcher"
    assert "Traceback" in caplog.text and "task scheduler dispatcher failed" in caplog.text
