"""Two real `provisioner serve` heads with `[ha] elect` on one real etcd: one runs the once-only
work (its /healthz lists the lifecycle sweeper, the other's does not); SIGKILL it and the other
takes the work over within the lead's ttl and a generous margin; stop it with SIGTERM and the
other takes over at once (the leader resigns). The takeover times are printed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.ha.election import Election
from provisioner.store.etcd import EtcdStore
from tests.support.etcd_server import EtcdServer, free_port
from tests.support.serve import WAIT, ServeProcess

pytestmark = pytest.mark.etcd

TTL = 2  # seconds: [ha] leader_ttl
MARGIN = 25.0  # seconds on top of the ttl: the machine is shared and noisy


@pytest.fixture
async def heads(etcd_server: EtcdServer,
                tmp_path: Path) -> AsyncIterator[tuple[list[ServeProcess], Election]]:
    namespace = f"/ha-{uuid.uuid4().hex[:8]}"
    heads = []
    for index in (1, 2):
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(tmp_path / f"head{index}"),
               "PROVISIONER_CONFIG": "", "PROVISIONER_STORE_BACKEND": "etcd",
               "PROVISIONER_STORE_ENDPOINTS": etcd_server.endpoint,
               "PROVISIONER_STORE_NAMESPACE": namespace,
               "PROVISIONER_HA_NAME": f"head{index}",
               "PROVISIONER_HA_ELECT": "true", "PROVISIONER_HA_LEADER_TTL": str(TTL),
               "PROVISIONER_STORE_TIMEOUT": "1",  # (the ttl is at least twice it)
               "PROVISIONER_DHCP_MODE": "off", "PROVISIONER_TFTP_ENABLED": "false",
               "PROVISIONER_HANDOFF_KIND": "none",
               "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": str(free_port()),
               "PROVISIONER_API_LISTEN": "127.0.0.1", "PROVISIONER_API_PORT": str(free_port()),
               "PYTHONUNBUFFERED": "1"}
        heads.append(ServeProcess(env, tmp_path / f"head{index}.log"))
    store = EtcdStore([etcd_server.endpoint], namespace=namespace)
    try:
        yield heads, Election(store, "singletons", "test")
    finally:
        for head in heads:
            head.kill(signal.SIGKILL)
        await store.close()


async def leader_pid(election: Election) -> int | None:
    leader = await election.leader()  # host:pid:random (nodes/rollout.py owner_id)
    return int(leader.split(":")[1]) if leader else None


async def leading(heads: list[ServeProcess], election: Election) -> ServeProcess:
    """The head that leads, once one does and lists the once-only work."""
    deadline = time.monotonic() + WAIT
    while True:
        pid = await leader_pid(election)
        for head in heads:
            ours = head.proc is not None and head.proc.pid == pid
            if ours and "lifecycle sweeper" in (await head.tasks() or set()):
                return head
        assert time.monotonic() < deadline, "no head leads"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_the_other_head_takes_the_work_over(
        heads: tuple[list[ServeProcess], Election], sig: int) -> None:
    both, election = heads
    await asyncio.gather(*(head.start() for head in both))
    leader = await leading(both, election)
    other = both[1] if leader is both[0] else both[0]
    assert "lifecycle sweeper" not in (await other.tasks() or set())
    stopped = time.monotonic()
    leader.kill(sig)
    assert other.proc is not None
    while await leader_pid(election) != other.proc.pid:
        assert time.monotonic() - stopped < TTL + MARGIN, "the other head did not take over"
        await asyncio.sleep(0.02)
    took = time.monotonic() - stopped
    await leading([other], election)
    print(f"\ntakeover after {signal.Signals(sig).name}: {took:.2f} s (leader_ttl {TTL} s)")
