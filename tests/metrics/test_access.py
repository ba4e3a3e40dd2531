"""Who may read /metrics: anyone on loopback; from another address, a token (the appliance: any
role, viewer and up; the scheduler: its [scheduler] token). A refusal is a 401 or 403 that
says what to do, logged with the requester's address, and counted."""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.lab.netns import Namespace
from provisioner.metrics.registry import APPLIANCE
from provisioner.scheduler.app import create_app as scheduler_app
from provisioner.scheduler.service import SchedulerServer
from provisioner.scheduler.state import SchedulerState
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings, open_api

OUTSIDE = ("10.20.30.40", 40000)
LOOPBACK = ("127.0.0.1", 40000)


def client(app: object, address: tuple[str, int]) -> httpx.AsyncClient:
    """An ASGI client whose requests come from `address` (the scope's client)."""
    transport = httpx.ASGITransport(app=app, client=address)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://metrics")


def refused(plane: str, reason: str) -> float:
    return APPLIANCE.get_sample_value("provisioner_refused_total",
                                   {"plane": plane, "reason": reason}) or 0.0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    found, inventory = await open_api(MemoryStore(), api_settings(tmp_path))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


async def test_the_appliance_answers_loopback_without_a_token(api: Api) -> None:
    async with client(create_app(api.ctx), LOOPBACK) as local:
        answer = await local.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'provisioner_nodes{state="ready"} 0.0' in answer.text


async def test_the_appliance_wants_a_token_from_elsewhere(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    before = refused("api", "no_token")
    async with client(create_app(api.ctx), OUTSIDE) as remote:
        bare = await remote.get("/metrics")
        wrong = await remote.get("/metrics", headers={"Authorization": "Bearer 0.x"})
        viewer = await remote.get("/metrics", headers=api.viewer)
    assert bare.status_code == 401 and "provisioner token create" in bare.json()["message"]
    assert bare.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert viewer.status_code == 200 and "provisioner_refused_total" in viewer.text
    assert refused("api", "no_token") == before + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "provisioner.web.metrics"]
    assert len(lines) == 1 and OUTSIDE[0] in lines[0]  # then a line a minute at most


async def test_the_scheduler_wants_its_token_from_elsewhere() -> None:
    state = SchedulerState(MemoryStore())
    await state.load()
    token = secrets.token_urlsafe(16)
    app = scheduler_app(state, token=token)
    async with client(app, OUTSIDE) as remote, client(app, LOOPBACK) as local:
        assert (await local.get("/metrics")).status_code == 200
        assert (await remote.get("/metrics")).status_code == 401
        good = await remote.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert good.status_code == 200 and "provisioner_scheduler_queue_depth 0.0" in good.text


async def test_a_scheduler_without_a_token_answers_loopback_only() -> None:
    state = SchedulerState(MemoryStore())
    await state.load()
    before = refused("scheduler", "no_token")
    async with client(scheduler_app(state), OUTSIDE) as remote:
        answer = await remote.get("/metrics")
    assert answer.status_code == 403 and "[scheduler] token" in answer.json()["message"]
    assert refused("scheduler", "no_token") == before + 1


@pytest.mark.netns
def test_over_real_sockets_the_peer_address_decides() -> None:
    """The scheduler in a namespace the test creates, listening on every address there: a
    scrape to 127.0.0.1 comes from loopback, one to the namespace's 10.250.0.1 from that
    address (its own, on lo), as a scrape from another machine would."""
    netns = f"pv-met-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    try:
        for args in (["link", "set", "lo", "up"], ["addr", "add", "10.250.0.1/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", netns, *args], check=True, timeout=30)
        inside = Namespace(netns)
        try:
            statuses = inside.run(_scrapes, timeout=60)
        finally:
            inside.close()
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=30)
    assert statuses == {"loopback": 200, "outside": 401, "outside+token": 200}, statuses


async def _scrapes() -> dict[str, int]:
    server = SchedulerServer(MemoryStore(), "0.0.0.0", 0, token="t0ken")
    await server.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            local = await http.get(f"http://127.0.0.1:{server.port}/metrics")
            outside = await http.get(f"http://10.250.0.1:{server.port}/metrics")
            with_token = await http.get(f"http://10.250.0.1:{server.port}/metrics",
                                        headers={"Authorization": "Bearer t0ken"})
    finally:
        await server.stop()
    return {"loopback": local.status_code, "outside": outside.status_code,
            "outside+token": with_token.status_code}
