"""The composition root: every service starts on the given settings, counters reach the API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.config import load_settings
from provisioner.errors import ConfigError
from provisioner.inventory import keys
from provisioner.security.tokens import Role
from provisioner.service import Appliance, api_public_base, boot_http_base, check_exposure
from provisioner.tftp.packet import Mode, Opcode, encode_request


async def test_appliance_starts_tftp_and_boot_and_reports_counters(tmp_path: Path) -> None:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "memory",
        "PROVISIONER_TFTP_LISTEN": "127.0.0.1", "PROVISIONER_TFTP_PORT": "0",
        "PROVISIONER_TFTP_IPXE_DIR": "", "PROVISIONER_BOOT_LISTEN": "127.0.0.1",
        "PROVISIONER_BOOT_PORT": "0", "PROVISIONER_HANDOFF_KIND": "none"})
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        assert appliance.tftp is not None and appliance.boot is not None
        request = encode_request(Opcode.RRQ, "missing.bin", Mode.OCTET)
        reply = await asyncio.to_thread(_ask, request, appliance.tftp.address)
        assert reply[:4] == b"\x00\x05\x00\x01"  # ERROR 1: file not found
        app = create_app(appliance.api_context())
        _, token = await appliance.api_tokens.create(Role.VIEWER, "test", 0.0)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test",
                                     headers={"Authorization": f"Bearer {token}"}) as api:
            counters = (await api.get("/api/v1/counters")).json()
        assert counters["tftp"]["rejected:not_found"] == 1
        assert "boot" in counters and "dhcp" not in counters
        host, port = appliance.boot.address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as boot:
            script = await boot.get("/boot/52:54:00:00:00:01.ipxe")
        assert script.status_code == 200 and "not a registered node" in script.text


def _ask(datagram: bytes, address: tuple[str, int]) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(datagram, address)
        return client.recvfrom(1024)[0]


def test_boot_url_prefers_a_reachable_address() -> None:
    settings = load_settings(env={"PROVISIONER_BOOT_PORT": "8069",
                                  "PROVISIONER_TFTP_LISTEN": "10.0.0.1"})
    assert boot_http_base(settings, None) == "http://10.0.0.1:8069"
    assert boot_http_base(settings, "10.9.9.9") == "http://10.9.9.9:8069"
    assert boot_http_base(load_settings(env={}), None) == "http://127.0.0.1"


def test_the_callback_url_follows_the_boot_host_or_the_public_url() -> None:
    settings = load_settings(env={"PROVISIONER_BOOT_PORT": "8069",
                                  "PROVISIONER_TFTP_LISTEN": "10.0.0.1",
                                  "PROVISIONER_API_LISTEN": "0.0.0.0"})
    assert api_public_base(settings, None) == "http://10.0.0.1:8080"
    public = load_settings(env={"PROVISIONER_API_PUBLIC_URL": "https://head.example/"})
    assert api_public_base(public, None) == "https://head.example"


def test_auth_may_be_off_only_on_loopback() -> None:
    off = load_settings(env={"PROVISIONER_API_AUTH": "false"})
    check_exposure(off, "127.0.0.1")
    check_exposure(off, "::1")
    check_exposure(load_settings(env={}), "0.0.0.0")
    for exposed in ("0.0.0.0", "10.0.0.1", "head.example"):
        with pytest.raises(ConfigError, match=r"api\.auth is off") as refused:
            check_exposure(off, exposed)
        assert "\n" not in str(refused.value)


async def test_the_appliance_supervises_its_background_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The followers, the lifecycle sweeper and retention run under the appliance's
    supervisor: a sweep that raises something unexpected is restarted, and /healthz says so
    until it is back."""
    monkeypatch.setattr("provisioner.service.SWEEP_INTERVAL", 0.05)
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "memory",
        "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_BOOT_LISTEN": "127.0.0.1",
        "PROVISIONER_BOOT_PORT": "0", "PROVISIONER_HANDOFF_KIND": "none"})
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        appliance.supervisor.first_delay = 0.5
        await appliance.start(stack)
        names = {state.name for state in appliance.supervisor.states()}
        # ("etcd compaction" too, over etcd)
        assert names == {f"follower {keys.NODES}", f"follower {keys.GROUPS}", "lifecycle sweeper",
                         "reimage resume", "boot retries", "retention",
                         f"follower {keys.HEADS}", "ha membership"}
        sweep = appliance.lifecycle.sweep
        failed = asyncio.Event()

        async def failing_once(*args: object) -> list[object]:
            if not failed.is_set():
                failed.set()
                raise KeyError("a bug in the sweep")
            return list(await sweep())

        monkeypatch.setattr(appliance.lifecycle, "sweep", failing_once)
        app = create_app(appliance.api_context())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as api:
            await asyncio.wait_for(failed.wait(), 5)
            await asyncio.sleep(0)
            down = await api.get("/healthz")
            assert down.status_code == 503 and down.json()["error"] == "task_down"
            assert "lifecycle sweeper" in down.json()["message"]
            await asyncio.sleep(0.8)
            up = await api.get("/healthz")
            assert up.status_code == 200
            tasks = {t["name"]: t for t in up.json()["tasks"]}
            assert tasks["lifecycle sweeper"]["restarts"] == 1
            assert tasks["lifecycle sweeper"]["status"] == "running"
    assert appliance.supervisor.states() == []
