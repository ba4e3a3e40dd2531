"""BuiltinHandoff against the real scheduler on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import HandoffError, NotFound
from provisioner.handoff.base import HandoffNode, HandoffRejected
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.nodes.model import MacAddress
from provisioner.scheduler.models import JobState
from provisioner.scheduler.service import SchedulerServer
from provisioner.store.sqlite import SqliteStore
from tests.support.etcd_server import free_port
from tests.support.waiting import eventually

NODE = HandoffNode("node001", MacAddress("52:54:00:00:00:01"), cpus=2, memory_mib=2048)


async def test_register_drain_wait_idle_resume(sched: SchedulerServer) -> None:
    handoff = BuiltinHandoff(sched.url)
    try:
        await handoff.register(NODE)
        await handoff.register(NODE)
        assert await handoff.is_idle("node001")
        job = await sched.state.submit(cpus=2, memory_mib=10, walltime=60, command="sleep 9")
        await eventually(lambda: _running(sched, job.id))
        assert not await handoff.is_idle("node001")
        await handoff.drain("node001", "reimage")
        assert sched.state.node("node001").state == "draining"
        await sched.state.done(job.id, 0, "")
        await eventually(lambda: handoff.is_idle("node001"))
        assert sched.state.node("node001").state == "drained"
        await handoff.resume("node001")
        assert sched.state.node("node001").state == "idle"
        with pytest.raises(NotFound):
            await handoff.drain("ghost", "x")
    finally:
        await handoff.close()


async def test_a_stopped_scheduler_is_a_retryable_error() -> None:
    handoff = BuiltinHandoff(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    try:
        with pytest.raises(HandoffError, match="not answering"):
            await handoff.register(NODE)
    finally:
        await handoff.close()


async def _running(sched: SchedulerServer, job_id: str) -> bool:
    return sched.state.job(job_id).state is JobState.RUNNING


async def test_the_token_goes_with_every_call(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "token.db")
    server = SchedulerServer(store, "127.0.0.1", 0, token="t0k")
    await server.start()
    right = BuiltinHandoff(server.url, token="t0k")
    wrong = BuiltinHandoff(server.url, token="nope")
    try:
        await right.register(NODE)
        await right.drain("node001", "test")
        assert await right.is_idle("node001")
        with pytest.raises(HandoffRejected, match="Bearer"):
            await wrong.register(NODE)
    finally:
        await right.close()
        await wrong.close()
        await server.stop()
        await store.close()
