"""In process, over loopback: a DhcpServer on 127.A.B.1 and a fake relay agent on 127.A.B.2:67
(a relayed request is answered to giaddr:67, so no broadcast is needed), plus hand-made BOOTP
datagrams. The `loopback` fixture is registered in tests/dhcp/conftest.py; the tests that use it
read the server's counters (tests/dhcp/test_loopback.py, test_reservation.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp.packet import MAGIC, DhcpPacket, decode, encode
from provisioner.dhcp.server import DhcpServer
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore
from provisioner.store.sqlite import SqliteStore

BOOT_PORT = 18080  # the boot plane port the replies name (nothing listens in these tests)
ZERO = IPv4Address(0)
WAIT = 10.0  # seconds any one expected event may take (a reply, a log line, a stored lease)
_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")

def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n" \
           f"{result.stderr}"


async def until(check: Callable[[], Awaitable[Any]], what: str, detail: Callable[[], str],
                 limit: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy (bounded); fail with `detail()`."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f} s: {what}\n{detail()}")
        await asyncio.sleep(0.05)


def bootp(op: int = 1, *, hlen: int = 6, xid: int = 1, chaddr: bytes = b"\x02\0\0\0\0\x01",
           giaddr: IPv4Address = ZERO, ciaddr: IPv4Address = ZERO, flags: int = 0x8000,
           htype: int = 1) -> bytes:
    """A 236-byte BOOTP header, built with struct (independently of the codec under test)."""
    return _HEADER.pack(op, htype, hlen, 0, xid, 0, flags, int(ciaddr), 0, 0, int(giaddr),
                        chaddr, b"", b"")


def malformed(giaddr: IPv4Address = ZERO) -> list[tuple[bytes, str]]:
    """(datagram, counter) pairs: what each malformed datagram must be counted as."""
    head = bootp(giaddr=giaddr) + MAGIC
    return [
        (b"", "dropped:short_header"),
        (bytes(100), "dropped:short_header"),
        (head + b"\x35\x01\x01\x0c\xc8abc", "dropped:option_overrun"),  # 12 claims 200 bytes
        (head + b"\x0c\x01x\xff", "dropped:missing_53"),
        (head + b"\x35\x02\x01\x01\xff", "dropped:bad_53"),  # 53 of length 2
        (head + b"\x35\x01\x01\x35\x01\x03\xff", "dropped:duplicate_53"),
        (head + b"\x35\x01\x03\x36\x04\x0a\x00\x00\x01\x36\x04\x0a\x00\x00\x02\xff",
         "dropped:duplicate_54"),
        (bootp(hlen=17, giaddr=giaddr) + MAGIC + b"\x35\x01\x01\xff", "dropped:hlen"),
        (head + b"\x35\x01\x01\x52\x03\x01\x05x\xff", "dropped:bad_option82"),  # sub-opt overrun
        (b"\xaa" * 65507, "dropped:bad_op"),  # the largest UDP payload over IPv4
        (head + b"\x35\x01\x02\xff", "ignored:server_message"),  # an OFFER from a "client"
    ]

NETWORK = IPv4Network("10.77.0.0/24")
POOL = (IPv4Address("10.77.0.10"), IPv4Address("10.77.0.99"))


@dataclass
class Loopback:
    """A DhcpServer on `server_ip`:`port` and a relay agent socket on `relay`:67."""

    server: DhcpServer
    inventory: Inventory
    relay: IPv4Address
    port: int
    sock: socket.socket
    data_dir: Path

    @property
    def server_ip(self) -> IPv4Address:
        return self.server.server_ip

    def send(self, data: bytes, port: int | None = None) -> None:
        self.sock.sendto(data, (str(self.server_ip), port or self.port))

    async def reply(self, limit: float = 5.0) -> DhcpPacket:
        loop = asyncio.get_running_loop()
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), limit)
        except TimeoutError:
            pytest.fail(f"no reply within {limit:.0f} s; counters {dict(self.server.counters)}")
        assert source[0] == str(self.server_ip)
        return decode(data)

    def nothing_queued(self) -> None:
        try:
            data = self.sock.recv(70000)
        except BlockingIOError:
            return
        pytest.fail(f"unexpected reply {decode(data)}")

    async def counted(self, key: str, count: int = 1) -> None:
        """Wait until counter `key` reaches `count` (the packet has been decided)."""
        deadline = time.monotonic() + WAIT
        while self.server.counters[key] < count:
            if time.monotonic() > deadline:
                pytest.fail(f"counter {key} never reached {count}: {dict(self.server.counters)}")
            await asyncio.sleep(0.005)

    def request(self, mtype: int, mac: str, *, xid: int | None = None,
                giaddr: IPv4Address | None = None, ciaddr: IPv4Address = ZERO,
                **options: bytes) -> bytes:
        """A relayed BOOTREQUEST (giaddr = our relay) with option 53 `mtype` and `o<code>=`."""
        opts = {53: bytes((mtype,))}
        opts.update({int(k.removeprefix("o")): v for k, v in options.items()})
        chaddr = MacAddress(mac).packed
        return encode(DhcpPacket(op=1, xid=xid if xid is not None else secrets.randbits(32),
                                 chaddr=chaddr, giaddr=giaddr or self.relay, ciaddr=ciaddr,
                                 options=opts))


Factory = Callable[..., Awaitable[Loopback]]


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[Factory]:
    """Start DhcpServers with DhcpSettings overrides; a random 127.A.B.0/24 each, so runs and
    other tests on this host do not meet."""
    if os.geteuid() != 0:
        pytest.skip("the fake relay agent binds port 67 (root)")
    started: list[tuple[DhcpServer, Inventory, KeyValueStore, socket.socket]] = []

    async def start(*, store: str = "memory", direct: bool = False,
                    **overrides: Any) -> Loopback:
        base = f"127.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"
        server_ip, relay = f"{base}.1", IPv4Address(f"{base}.2")
        port = free_udp_port(server_ip)
        subnet = SubnetSettings(network=str(NETWORK), routers=("10.77.0.1",),
                                pool_start=str(POOL[0]), pool_end=str(POOL[1]),
                                relay=str(relay))
        # direct: also a directly attached subnet, for requests without a relay (giaddr 0)
        attached = (SubnetSettings(network="10.78.0.0/24"),) if direct else ()
        settings = replace(DhcpSettings(mode="full", listen=server_ip, port=port,
                                        server_ip=server_ip, subnets=(subnet, *attached),
                                        detect_other_servers=False), **overrides)
        backend: KeyValueStore = (MemoryStore() if store == "memory"
                                  else SqliteStore(tmp_path / "store.db"))
        inventory = Inventory(backend)
        await inventory.start()
        server = DhcpServer(settings, inventory, boot_port=BOOT_PORT)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        started.append((server, inventory, backend, sock))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(relay), 67))
        sock.setblocking(False)
        await server.start()
        return Loopback(server, inventory, relay, port, sock, tmp_path)

    yield start
    for server, inventory, backend, sock in started:
        await server.close()
        await inventory.stop()
        await backend.close()
        sock.close()


DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
AGENT_INFO = b"\x01\x07sw1/p07\x02\x06\x00\x11\x22\x33\x44\x55"  # circuit-id, remote-id


async def known(lab: Loopback, mac: str) -> bool:
    return lab.inventory.node_by_mac(mac) is not None


async def idle(lab: Loopback) -> None:
    """Wait until the server has no request in flight (its writes are done)."""
    deadline = time.monotonic() + WAIT
    while lab.server.in_flight:
        if time.monotonic() > deadline:
            pytest.fail(f"{lab.server.in_flight} requests still in flight")
        await asyncio.sleep(0.005)
