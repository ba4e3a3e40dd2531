"""The composition root: every service starts on the given settings, counters reach the API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx

from provisioner.api.app import create_app
from provisioner.config import load_settings
from provisioner.service import Appliance, boot_http_base
from provisioner.tftp.packet import Mode, Opcode, encode_request


async def test_appliance_starts_tftp_and_boot_and_reports_counters(tmp_path: Path) -> None:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "memory",
        "PROVISIONER_TFTP_LISTEN": "127.0.0.1", "PROVISIONER_TFTP_PORT": "0",
        "PROVISIONER_TFTP_IPXE_DIR": "", "PROVISIONER_BOOT_LISTEN": "127.0.0.1",
        "PROVISIONER_BOOT_PORT": "0"})
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        assert appliance.tftp is not None and appliance.boot is not None
        request = encode_request(Opcode.RRQ, "missing.bin", Mode.OCTET)
        reply = await asyncio.to_thread(_ask, request, appliance.tftp.address)
        assert reply[:4] == b"\x00\x05\x00\x01"  # ERROR 1: file not found
        app = create_app(appliance.inventory, counters=appliance.counters)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as api:
            counters = (await api.get("/api/v1/counters")).json()
        assert counters["tftp"]["rejected:not_found"] == 1
        assert "boot" in counters and "dhcp" not in counters


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
