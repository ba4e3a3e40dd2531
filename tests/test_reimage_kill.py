"""A real `provisioner serve` SIGKILLed (or stopped with SIGTERM) in the middle of a rolling
reimage, then started again: once the dead process's lock has expired (rollout.LOCK_TTL; at once
after a SIGTERM, which lets it go), the new one resumes the rollout at the wave it was in; every
node ends on the new image and no wave is redone.

The nodes are played by this test on the same sqlite store: a node the appliance has set
reimaging (its power driver is `manual`, which only says what to do) fetches its boot script
and calls back through the real lifecycle, as /init would. About a minute: the lock's expiry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from provisioner.config import load_settings
from provisioner.images.format.catalog import ImageCatalog
from provisioner.inventory.locks import StoreLock
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.nodes.progress import load_status
from provisioner.nodes.rollout import LOCK, LOCK_TTL
from provisioner.security.tokens import ApiTokens, Role
from provisioner.store.sqlite import SqliteStore
from tests.api.conftest import publish_image
from tests.support.etcd_server import free_port
from tests.support.serve import ServeProcess

S = NodeState
NAMES = ("n1", "n2", "n3")
WAIT = 30.0  # seconds, generous, for a step of a busy machine


class Nodes:
    """The nodes, played on the store: each boots `version` once set reimaging (unless held)."""

    def __init__(self, store: SqliteStore, version: str) -> None:
        self.inventory = Inventory(store)
        self.lifecycle = Lifecycle(self.inventory, None)
        self.version, self.hold, self.booted = version, {"n2"}, list[str]()

    async def play(self) -> None:
        while True:
            for name in NAMES:
                node = (await self.inventory.get_node(name)).value
                if node.state is S.REIMAGING and name not in self.hold:
                    await self.lifecycle.boot_script_served(node.mac, "compute", self.version)
                    await self.lifecycle.booted(node.mac, {"cpus": 1}, self.version)
                    self.booted.append(name)
            await asyncio.sleep(0.05)


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, SqliteStore, str, str]]:
    data = tmp_path / "data"
    env = {**os.environ, "PROVISIONER_DATA_DIR": str(data), "PROVISIONER_CONFIG": "",
           "PROVISIONER_STORE_BACKEND": "sqlite", "PROVISIONER_DHCP_MODE": "off",
           "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_HANDOFF_KIND": "none",
           "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": str(free_port()),
           "PROVISIONER_API_LISTEN": "127.0.0.1", "PROVISIONER_API_PORT": str(free_port()),
           "PYTHONUNBUFFERED": "1"}
    settings = load_settings(env=env)
    version = publish_image(ImageCatalog(settings.images_dir), "compute").version
    store = SqliteStore(settings.store_path)
    for index, name in enumerate(NAMES, 1):
        await Inventory(store).add_node(Node(
            MacAddress(f"52:54:00:00:03:{index:02x}"), name, image="compute:0", state=S.READY,
            settings={"power_driver": "manual"}))
    _, token = await ApiTokens(store).create(Role.OPERATOR, "test", time.time())
    process = ServeProcess(env, tmp_path / "serve.log")
    try:
        yield process, store, token, version
    finally:
        process.kill()
        await store.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_a_killed_or_stopped_appliance_resumes_its_rollout_at_the_wave(
        appliance: tuple[ServeProcess, SqliteStore, str, str], sig: int) -> None:
    process, store, token, version = appliance
    nodes = Nodes(store, version)
    await process.start()
    async with httpx.AsyncClient(base_url=process.url,
                                 headers={"Authorization": f"Bearer {token}"}) as api:
        started = await api.post("/api/v1/reimage", json={
            "nodes": list(NAMES), "image": "compute", "wave": 1, "force": True})
        assert started.status_code == 202, started.text
        rollout = started.json()["id"]
        again = await api.post("/api/v1/reimage", json={"nodes": ["n3"], "image": "compute"})
        assert again.status_code == 409 and "held by" in again.json()["message"]
    player = asyncio.create_task(nodes.play())
    try:
        await _until(lambda: _step_is(store, rollout, "n2", "waiting_callback"), process)
        # In wave 2. SIGKILL: no cleanup, its lock stays until it expires. SIGTERM: a graceful
        # stop, the lock is let go and the next start resumes at once.
        exited = process.kill(sig)
        assert (await load_status(Inventory(store), rollout)).state == "running"
        lock = await StoreLock(store, LOCK, "test").holder()
        if sig == signal.SIGTERM:
            assert exited == 0 and lock is None, process.log.read_text()
        else:
            assert lock is not None
        nodes.hold.clear()  # n2 will come up: the next appliance must wait for it, not redo it
        killed = time.monotonic()
        await process.start()
        await _until(lambda: _state_is(store, rollout, "succeeded"), process,
                     timeout=LOCK_TTL + 3 * WAIT)
        print(f"resumed and finished {time.monotonic() - killed:.1f} s after the "
              f"{signal.Signals(sig).name}")
    finally:
        player.cancel()
    inventory = Inventory(store)
    for name in NAMES:
        node = (await inventory.get_node(name)).value
        assert (node.state, node.image) == (S.READY, "compute"), name
    assert nodes.booted == ["n1", "n2", "n3"]  # each once: no wave redone
    status = await load_status(inventory, rollout)
    assert status.waves_done == 3 and "resumed" in process.log.read_text()


async def _until(check: Callable[[], Awaitable[bool]], process: ServeProcess,
                 timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert process.proc is not None and process.proc.poll() is None, \
            process.log.read_text()
        assert time.monotonic() < deadline, process.log.read_text()[-4000:]
        await asyncio.sleep(0.1)


async def _step_is(store: SqliteStore, rollout: str, name: str, step: str) -> bool:
    return (await load_status(Inventory(store), rollout)).nodes[name].step == step


async def _state_is(store: SqliteStore, rollout: str, state: str) -> bool:
    return (await load_status(Inventory(store), rollout)).state == state
