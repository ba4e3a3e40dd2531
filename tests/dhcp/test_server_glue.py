"""The DHCP server's asyncio glue over real UDP sockets on loopback, without root: it binds its
ports, drops and counts a malformed datagram and answers the next request, and closes cleanly
with exchanges in flight.

Each server gets its own 127.A.B.1 (all of 127/8 is routed to lo) and a free port, so parallel
runs never meet. Answers are only ever asked of port 4011, where a PXE boot server replies to
the request's source address and port (PXE spec 2.1 section 2.2.4): no broadcast leaves the
test, and no privileged port is needed. In-flight exchanges are REQUESTs whose lease write is
held at the store (`HeldLeaseStore`), so that close() meets them mid-way every time.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any

import pytest

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp.packet import DhcpPacket, decode
from provisioner.dhcp.policy import PXE_PORT
from provisioner.dhcp.server import DhcpServer
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.store.memory import MemoryStore
from tests.dhcp.test_vectors import MAC, Option, wire

WAIT = 5.0  # seconds any one expected event may take
ACK = 5
# A PXE ROM's DHCPREQUEST to the boot server (BIOS, architecture 0), sent with its address.
PXE_REQUEST: list[Option] = [
    (53, b"\x03"),
    (93, b"\x00\x00"),
    (60, b"PXEClient:Arch:00000:UNDI:002001"),
]
MALFORMED = b"\x01" * 20  # shorter than the fixed BOOTP header: "short_header"


class HeldLeaseStore(MemoryStore):
    """A MemoryStore whose lease writes wait until `release` is set: the exchanges that make
    them stay in flight for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.held = 0  # lease writes waiting now

    async def put(self, key: str, value: bytes, *, expect: int | None = None,
                  lease: int = 0) -> int:
        if key.startswith(keys.LEASES):
            self.held += 1
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        return await super().put(key, value, expect=expect, lease=lease)


@dataclass
class Glue:
    """A started DhcpServer on `ip`, and a client socket on the next loopback address."""

    server: DhcpServer
    store: HeldLeaseStore
    ip: str
    port: int
    client: socket.socket
    tasks_before: set[asyncio.Task[Any]] = field(default_factory=set)

    def send(self, data: bytes, port: int) -> None:
        self.client.sendto(data, (self.ip, port))

    async def reply(self) -> tuple[DhcpPacket, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(self.client, 70000), WAIT)
        except TimeoutError:
            pytest.fail(f"no reply within {WAIT:.0f} s; counters {dict(self.server.counters)}")
        return decode(data), source

    def nothing_received(self) -> None:
        try:
            data = self.client.recv(70000)
        except BlockingIOError:
            return
        pytest.fail(f"unexpected datagram {data[:64]!r}")

    async def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {WAIT:.0f} s: {what}; counters "
                            f"{dict(self.server.counters)}")
            await asyncio.sleep(0.005)


Factory = Callable[..., Awaitable[Glue]]


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def glue() -> AsyncIterator[Factory]:
    started: list[tuple[Glue, Inventory]] = []

    async def start(*, start_server: bool = True, **overrides: Any) -> Glue:
        base = f"127.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"
        ip = f"{base}.1"
        port = _free_udp_port(ip)
        subnet = SubnetSettings(network="10.77.0.0/24", pool_start="10.77.0.10",
                                pool_end="10.77.0.99")
        settings = replace(DhcpSettings(mode="proxy", listen=ip, port=port, server_ip=ip,
                                        subnets=(subnet,), detect_other_servers=False),
                           **overrides)
        store = HeldLeaseStore()
        inventory = Inventory(store)
        await inventory.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((f"{base}.2", 0))
        client.setblocking(False)
        lab = Glue(DhcpServer(settings, inventory), store, ip, port, client)
        started.append((lab, inventory))
        lab.tasks_before = asyncio.all_tasks()
        if start_server:
            await lab.server.start()
        return lab

    yield start
    for lab, inventory in started:
        lab.store.release.set()
        await asyncio.wait_for(lab.server.close(), WAIT)
        await inventory.stop()
        await lab.store.close()
        lab.client.close()


def _bound(server: DhcpServer) -> set[tuple[str, int]]:
    return {transport.get_extra_info("sockname") for transport in server.transports}


async def test_the_server_binds_its_ports_and_reads_each(glue: Factory) -> None:
    lab = await glue()
    assert _bound(lab.server) == {(lab.ip, lab.port), (lab.ip, PXE_PORT)}
    for port in (lab.port, PXE_PORT):
        lab.send(MALFORMED, port)
    await lab.until(lambda: lab.server.counters["dropped:short_header"] == 2,
                    "a datagram read on each port")


async def test_a_port_in_use_fails_start_and_close_frees_the_rest(glue: Factory) -> None:
    """start() raises when a port is taken; close() then frees what it had opened."""
    lab = await glue(start_server=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((lab.ip, PXE_PORT))  # no SO_REUSEADDR: the server cannot share it
        with pytest.raises(OSError):
            await lab.server.start()
    assert _bound(lab.server) == {(lab.ip, lab.port)}  # opened before 4011 failed
    await asyncio.wait_for(lab.server.close(), WAIT)
    assert asyncio.all_tasks() - lab.tasks_before == set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((lab.ip, lab.port))


async def test_a_malformed_datagram_is_dropped_and_counted_and_the_next_is_answered(
        glue: Factory) -> None:
    lab = await glue()
    lab.send(MALFORMED, PXE_PORT)
    lab.send(b"\xaa" * 65507, PXE_PORT)  # the largest UDP payload: op 0xaa, "bad_op"
    lab.send(wire(PXE_REQUEST, xid=0x600D, ciaddr="10.77.0.40"), PXE_PORT)
    reply, source = await lab.reply()
    assert source == (lab.ip, PXE_PORT)
    assert (reply.xid, reply.message_type, reply.chaddr[:6]) == (0x600D, ACK, MAC)
    assert reply.file == b"undionly.kpxe" and reply.ciaddr == IPv4Address("10.77.0.40")
    counters = lab.server.counters
    assert (counters["dropped:short_header"], counters["dropped:bad_op"]) == (1, 1)
    assert (counters["received:bootserverrequest"], counters["sent:ack"]) == (1, 1)
    assert counters["errors"] == 0  # a malformed datagram is expected, not a bug
    lab.nothing_received()  # the dropped datagrams got no answer


async def test_a_bug_while_answering_one_packet_is_counted_and_the_next_is_answered(
        glue: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    lab = await glue()
    answer = lab.server.answers.boot_server
    calls = 0

    def fails_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        answer(*args)

    monkeypatch.setattr(lab.server.answers, "boot_server", fails_once)
    lab.send(wire(PXE_REQUEST, xid=0xB06, ciaddr="10.77.0.41"), PXE_PORT)
    lab.send(wire(PXE_REQUEST, xid=0x600D, ciaddr="10.77.0.42"), PXE_PORT)
    reply, _ = await lab.reply()
    assert reply.xid == 0x600D and calls == 2
    assert lab.server.counters["errors"] == 1
    assert "bug while handling a packet" in caplog.text
    lab.nothing_received()


async def test_close_with_exchanges_in_flight_ends_them_and_frees_the_sockets(
        glue: Factory) -> None:
    lab = await glue(mode="full")
    server_id = (54, IPv4Address(lab.ip).packed)
    count = 5
    for index in range(count):
        address = IPv4Address("10.77.0.20") + index
        chaddr = MAC[:5] + bytes((index,))
        # SELECTING (RFC 2131 section 4.3.2): bound before the ACK, so it awaits the store.
        lab.send(wire([(53, b"\x03"), server_id, (50, address.packed)], chaddr=chaddr,
                      xid=0x5E00 + index), lab.port)
    await lab.until(lambda: lab.store.held == count, f"{count} lease writes held")
    assert lab.server.in_flight == count
    sockets = [transport.get_extra_info("socket") for transport in lab.server.transports]
    await asyncio.wait_for(lab.server.close(), WAIT)
    assert lab.server.in_flight == 0
    assert lab.store.held == 0  # the held writes were cancelled, not left waiting
    assert asyncio.all_tasks() - lab.tasks_before == set()  # no sweeper, watch or exchange
    assert all(transport.is_closing() for transport in lab.server.transports)
    assert [sock.fileno() for sock in sockets] == [-1] * len(sockets)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((lab.ip, lab.port))  # no SO_REUSEADDR: only a closed socket lets it
    assert lab.server.counters["sent:ack"] == 0
    assert await lab.server.inventory.list_leases() == []
    lab.nothing_received()
