"""/healthz: 200 with the background tasks' states; 503 naming a task while it is down, and
while the store does not answer (bounded), in the usual error body."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.api.routes.config import HEALTH_STORE_TIMEOUT
from provisioner.inventory.repository import Inventory
from provisioner.runtime.supervisor import Supervisor
from provisioner.store.etcd import EtcdStore
from tests.api.conftest import Api, api_settings
from tests.support.etcd_server import free_port


async def test_health_lists_the_tasks_and_turns_503_while_one_is_down(api: Api) -> None:
    sup = Supervisor(first_delay=0.5)
    api.ctx.supervisor = sup
    failed, recovered = asyncio.Event(), asyncio.Event()

    async def sweeper() -> None:
        if not failed.is_set():
            failed.set()
            raise KeyError("mac")
        recovered.set()
        await asyncio.Event().wait()

    sup.spawn("follower /nodes/", asyncio.Event().wait)
    sup.spawn("lifecycle sweeper", sweeper)
    try:
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0)
        down = await api.client.get("/healthz")
        assert down.status_code == 503
        body = down.json()
        assert set(body) == {"error", "message"} and body["error"] == "task_down"
        assert "lifecycle sweeper restarting" in body["message"]
        assert "KeyError: 'mac'" in body["message"] and "follower" not in body["message"]
        await asyncio.wait_for(recovered.wait(), 5)
        up = await api.client.get("/healthz")
        assert up.status_code == 200
        health = up.json()
        assert health["status"] == "ok" and health["store"] == "memory"
        tasks = {t["name"]: t for t in health["tasks"]}
        assert tasks.keys() == {"follower /nodes/", "lifecycle sweeper"}
        assert tasks["lifecycle sweeper"]["status"] == "running"
        assert tasks["lifecycle sweeper"]["restarts"] == 1
        assert tasks["follower /nodes/"]["restarts"] == 0
    finally:
        await sup.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def _health_over(endpoint: str, tmp_path: Path) -> tuple[httpx.Response, float]:
    """/healthz of an API whose (real) etcd client is pointed at `endpoint`."""
    store = EtcdStore([endpoint], timeout=30.0)
    ctx = ApiContext.build(api_settings(tmp_path), Inventory(store))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                                     base_url="http://api") as client:
            started = time.monotonic()
            response = await client.get("/healthz")
            return response, time.monotonic() - started
    finally:
        await store.close()


async def test_health_is_503_when_the_store_is_refused(tmp_path: Path) -> None:
    response, _ = await _health_over(f"127.0.0.1:{free_port()}", tmp_path)
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    assert "the store is unreachable" in response.json()["message"]


async def test_health_answers_503_in_bounded_time_when_the_store_hangs(
        tmp_path: Path, silent_port: int) -> None:
    response, took = await _health_over(f"127.0.0.1:{silent_port}", tmp_path)
    assert response.status_code == 503
    assert response.json() == {
        "error": "store_unavailable",
        "message": f"the store is unreachable (no answer in {HEALTH_STORE_TIMEOUT:g} s); "
                   "check the [store] settings and that the store runs"}
    assert HEALTH_STORE_TIMEOUT <= took < HEALTH_STORE_TIMEOUT + 1.5
