"""A fenced head (ha/fencing.py) issues no boot token: the boot plane refuses a node's overlay
with 503 and its script starts no boot (it waits and asks again), with no side effect; /healthz
answers 503 naming the reason. Both recover as soon as the head is a member again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import NodeState
from provisioner.store.memory import MemoryStore
from tests.api.conftest import api_settings
from tests.boot.test_routes import MAC, Plane, _booting, _plane

REASON = "no store lease renewal for 2.1 s"


class Fence:
    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> str | None:
        return self.reason


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    found, server = await _plane(tmp_path, None)
    try:
        yield found
    finally:
        await found.http.aclose()
        await server.close()
        await found.inventory.stop()


async def test_a_fenced_head_starts_no_boot_and_issues_no_token(plane: Plane) -> None:
    fence = Fence()
    plane.plane.fenced = fence
    await _booting(plane)
    fence.reason = REASON
    script = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert script.status_code == 200 and f"cannot start a boot: {REASON}" in script.text
    assert "chain --replace" in script.text  # it asks again, here or at another head
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.REGISTERED
    fence.reason = None
    assert (await plane.http.get(f"/boot/{MAC}.ipxe")).status_code == 200
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.PROVISIONING
    fence.reason = REASON
    refused = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert refused.status_code == 503 and REASON in refused.text
    assert await plane.plane.tokens.store.get(keys.boot_token(MAC.value)) is None
    assert [e.kind for e in await plane.inventory.list_events(MAC)] == ["provisioning"]
    fence.reason = None
    assert (await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")).status_code == 200


async def test_healthz_is_503_while_the_head_is_fenced(tmp_path: Path) -> None:
    inventory = Inventory(MemoryStore())
    await inventory.start()
    fence = Fence()
    ctx = ApiContext.build(api_settings(tmp_path), inventory)
    ctx.fenced = fence
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                                     base_url="http://api") as api:
            assert (await api.get("/healthz")).status_code == 200
            fence.reason = REASON
            fenced = await api.get("/healthz")
            assert fenced.status_code == 503
            assert fenced.json()["error"] == "fenced" and REASON in fenced.json()["message"]
            fence.reason = None
            assert (await api.get("/healthz")).status_code == 200
    finally:
        await inventory.stop()
