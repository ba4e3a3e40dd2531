"""Two real `provisioner serve` heads with `[ha] elect` on one real etcd: one runs the once-only
work (its /healthz lists the lifecycle sweeper, the other's does not); SIGKILL it and the other
takes the work over within the lead's ttl and a generous margin; stop it with SIGTERM and the
other takes over at once (the leader resigns). The takeover times are printed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from provisioner.ha.election import Election
from provisioner.lab.netns import stop_process
from provisioner.store.etcd import EtcdStore
from tests.support.etcd_server import EtcdServer, free_port

pytestmark = pytest.mark.etcd

TTL = 2  # seconds: [ha] leader_ttl
MARGIN = 25.0  # seconds on top of the ttl: the machine is shared and noisy
WAIT = 30.0  # seconds for a head to start


class Head:
    """`provisioner serve` on loopback ports, the etcd store, `[ha] elect`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['PROVISIONER_API_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "provisioner", "serve"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + WAIT
        while await self.tasks() is None:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    async def tasks(self) -> set[str] | None:
        """The names of the tasks its /healthz lists; None while it does not answer."""
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.get(self.url + "/healthz", timeout=2.0)
        except httpx.HTTPError:
            return None
        return {t["name"] for t in answer.json().get("tasks", [])}

    def stop(self, sig: int) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)


@pytest.fixture
async def heads(etcd_server: EtcdServer,
                tmp_path: Path) -> AsyncIterator[tuple[list[Head], Election]]:
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
        heads.append(Head(env, tmp_path / f"head{index}.log"))
    store = EtcdStore([etcd_server.endpoint], namespace=namespace)
    try:
        yield heads, Election(store, "singletons", "test")
    finally:
        for head in heads:
            head.stop(signal.SIGKILL)
        await store.close()


async def leader_pid(election: Election) -> int | None:
    leader = await election.leader()  # host:pid:random (nodes/rollout.py owner_id)
    return int(leader.split(":")[1]) if leader else None


async def leading(heads: list[Head], election: Election) -> Head:
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
        heads: tuple[list[Head], Election], sig: int) -> None:
    both, election = heads
    await asyncio.gather(*(head.start() for head in both))
    leader = await leading(both, election)
    other = both[1] if leader is both[0] else both[0]
    assert "lifecycle sweeper" not in (await other.tasks() or set())
    stopped = time.monotonic()
    leader.stop(sig)
    assert other.proc is not None
    while await leader_pid(election) != other.proc.pid:
        assert time.monotonic() - stopped < TTL + MARGIN, "the other head did not take over"
        await asyncio.sleep(0.02)
    took = time.monotonic() - stopped
    await leading([other], election)
    print(f"\ntakeover after {signal.Signals(sig).name}: {took:.2f} s (leader_ttl {TTL} s)")
