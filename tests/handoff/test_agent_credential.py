"""The node agent's credential from end to end, with real parts: the appliance's boot callback
(the FastAPI app) answers it, the durable outbox carries its hash through BuiltinHandoff to a
live scheduler on loopback, and there it opens poll and done for that node only. A new boot
replaces it: the previous boot's credential stops working."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.handoff.agent import agent_hash
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.handoff.outbox import HandoffQueue
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import MacAddress, Node
from provisioner.scheduler.service import SchedulerServer
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Clock, api_settings
from tests.support.waiting import eventually

MAC = MacAddress("52:54:00:00:00:01")
FACTS = {"cpus": 2, "memory_mib": 1024, "disks": [], "nics": []}


@dataclass
class Appliance:
    ctx: ApiContext
    client: httpx.AsyncClient
    store: MemoryStore
    clock: Clock

    async def boot(self, image_version: str = "1") -> str:
        """One boot of node001: boot script served, callback with a fresh one-boot token; the
        agent credential the callback answered."""
        await self.ctx.lifecycle.boot_script_served(MAC, "compute", image_version)
        token = await self.ctx.boot_tokens.issue(MAC, 600, self.clock())
        answer = await self.client.post("/node/v1/booted", json={
            "mac": MAC.value, "token": token, "image": "compute", "version": image_version,
            "facts": FACTS})
        assert answer.status_code == 200, answer.text
        credential: str = answer.json()["agent_token"]
        return credential


@pytest.fixture
async def appliance(sched: SchedulerServer, tmp_path: Path) -> AsyncIterator[Appliance]:
    async with open_appliance(sched.url, tmp_path) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_appliance(scheduler_url: str, tmp_path: Path,
                         **env: str) -> AsyncIterator[Appliance]:
    store = MemoryStore()
    inventory = Inventory(store)
    await inventory.start()
    clock = Clock()
    settings = api_settings(tmp_path, **env)
    lifecycle = Lifecycle(inventory, None, clock, settings.defaults)
    queue = HandoffQueue(store, BuiltinHandoff(scheduler_url), lifecycle.confirmed,
                         first_delay=0.01)
    lifecycle.handoff = queue
    await queue.start()
    ctx = ApiContext.build(settings, inventory, lifecycle=lifecycle, clock=clock)
    await inventory.add_node(Node(MAC, "node001"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                               base_url="http://api")
    try:
        yield Appliance(ctx, client, store, clock)
    finally:
        await client.aclose()
        await queue.stop()
        await queue.handoff.close()
        await inventory.stop()


async def _poll(agent: httpx.AsyncClient, credential: str) -> httpx.Response:
    return await agent.post("/sched/v1/nodes/node001/poll",
                      headers={"Authorization": f"Bearer {credential}"})


async def test_the_callback_credential_opens_the_scheduler_to_that_node_only(
        appliance: Appliance, sched: SchedulerServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = await appliance.boot()
    assert len(first) == 43  # secrets.token_urlsafe(32): 256 bits
    await eventually(lambda: _has_agent(sched, agent_hash(first)))
    async with httpx.AsyncClient(base_url=sched.url) as agent:
        assert (await _poll(agent, first)).status_code == 204

        second = await appliance.boot("2")  # a reboot: a new callback, a new credential
        assert second != first
        await eventually(lambda: _has_agent(sched, agent_hash(second)))
        assert (await _poll(agent, second)).status_code == 204
        replayed = await _poll(agent, first)
        assert replayed.status_code == 401
    # The credential is in no store (appliance or scheduler) and in no log, only its hash.
    for store in (appliance.store, sched.store):
        values = b"".join(kv.value for kv in (await store.range("/")).items)
        assert first.encode() not in values and second.encode() not in values
    sched_node = await sched.store.get(keys.sched_node("node001"))
    assert sched_node is not None
    assert json.loads(sched_node.value)["agent_hash"] == agent_hash(second)
    assert first not in caplog.text and second not in caplog.text


async def test_the_first_poll_right_after_the_callback_is_answered(
        appliance: Appliance, sched: SchedulerServer) -> None:
    """The callback answers once the outbox has tried the registration: the agent's first poll,
    made the moment the answer arrives, is not refused for a hash the scheduler lacks yet."""
    for version in ("1", "2"):  # a first boot, then a reboot with a new credential
        credential = await appliance.boot(version)
        async with httpx.AsyncClient(base_url=sched.url) as agent:
            assert (await _poll(agent, credential)).status_code == 204


async def test_a_silent_scheduler_delays_the_callback_answer_only_boundedly(
        tmp_path: Path) -> None:
    """A scheduler that accepts the connection and never answers: the callback still answers
    (after answer_wait), and the entry stays in the outbox for later delivery."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with open_appliance(url, tmp_path,
                                  PROVISIONER_HANDOFF_ANSWER_WAIT="0.2") as appliance:
            credential = await asyncio.wait_for(appliance.boot(), 30)
            assert credential
            assert await appliance.store.get(keys.outbox(MAC.value)) is not None


async def test_the_outbox_entry_carries_the_hash_until_delivered(
        appliance: Appliance, sched: SchedulerServer) -> None:
    """The hash travels in the callback's own txn (the outbox entry), so a scheduler that is
    down at boot still gets it later."""
    await appliance.ctx.lifecycle.handoff.stop()  # type: ignore[union-attr]
    credential = await appliance.boot()
    entry = await appliance.store.get(keys.outbox(MAC.value))
    assert entry is not None
    assert json.loads(entry.value)["node"]["agent_hash"] == agent_hash(credential)
    assert "node001" not in sched.state.nodes


async def test_without_the_builtin_scheduler_there_is_no_credential(tmp_path: Path) -> None:
    store = MemoryStore()
    inventory = Inventory(store)
    await inventory.start()
    clock = Clock()
    settings = api_settings(tmp_path, PROVISIONER_HANDOFF_KIND="none")
    ctx = ApiContext.build(settings, inventory, clock=clock)
    await inventory.add_node(Node(MAC, "node001"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                               base_url="http://api")
    try:
        answer = await Appliance(ctx, client, store, clock).boot()
        assert answer == ""
    finally:
        await client.aclose()
        await inventory.stop()


async def _has_agent(sched: SchedulerServer, wanted: str) -> bool:
    entry = sched.state.nodes.get("node001")
    return entry is not None and entry[0].agent_hash == wanted
