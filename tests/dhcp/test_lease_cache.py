"""Lease caching and the store being down, on the DHCP server's answers with a hand-moved clock.

A MAC that holds a recorded lease is ACKed again from it, with no store write, while more than
lease_cache_threshold of lease_time is left, and with what is left of it as its lease time.
While the store does not answer, a leased MAC still gets OFFER and ACK for its address, a MAC
without a lease gets nothing, and the counters say why. The unit tests use a MemoryStore that
can be made unreachable; the last test stops a real etcd (tests/support/etcd_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

import pytest

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp import policy
from provisioner.dhcp.packet import DhcpPacket
from provisioner.dhcp.server import DhcpServer
from provisioner.errors import StoreUnavailable
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress
from provisioner.store.base import KeyValueStore, StoreStatus
from provisioner.store.memory import MemoryStore
from tests.support.etcd_server import EtcdServer
from tests.support.waiting import eventually

SERVER = IPv4Address("10.30.0.1")
LEASE_TIME = 1000
START = 1_000_000.0
OLD_MAC = MacAddress("52:54:00:00:00:01")
NEW_MAC = MacAddress("52:54:00:00:00:02")


class FlakyStore(MemoryStore):
    """A MemoryStore that can be made unreachable, as an etcd that was killed; counts lease
    writes."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lease_writes = 0

    async def put(self, key: str, value: bytes, *, expect: int | None = None,
                  lease: int = 0) -> int:
        if self.down:
            raise StoreUnavailable("the test made the store unreachable")
        if key.startswith(keys.LEASES):
            self.lease_writes += 1
        return await super().put(key, value, expect=expect, lease=lease)

    async def status(self) -> StoreStatus:
        if self.down:
            raise StoreUnavailable("the test made the store unreachable")
        return await super().status()


@dataclass
class Sent:
    """Stands in for send.ReplySender: keeps the replies instead of sending them."""

    server_ip: IPv4Address = SERVER
    replies: list[DhcpPacket] = field(default_factory=list)

    def send(self, request: DhcpPacket, reply: DhcpPacket, transport: Any,
             origin: Any = None) -> None:
        self.replies.append(reply)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    server: DhcpServer
    clock: Clock
    sent: Sent
    _xid: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.server.counters)

    def _packet(self, mac: MacAddress, options: dict[int, bytes]) -> DhcpPacket:
        return DhcpPacket(op=1, xid=next(self._xid), chaddr=mac.packed, options=options)

    def _classify(self, packet: DhcpPacket) -> policy.Decision:
        return policy.classify(packet, policy.Segment(frozenset({SERVER})))

    def _answer(self) -> DhcpPacket | None:
        replies = self.sent.replies
        return replies.pop() if replies else None

    def discover(self, mac: MacAddress) -> DhcpPacket | None:
        decision = self._classify(self._packet(mac, {53: b"\x01"}))
        assert isinstance(decision, policy.Discover)
        self.server.answers.discover(decision, cast(asyncio.DatagramTransport, None))
        return self._answer()

    async def request(self, mac: MacAddress, ip: IPv4Address) -> DhcpPacket | None:
        """A SELECTING REQUEST for `ip` (RFC 2131 section 4.3.2)."""
        decision = self._classify(self._packet(mac, {53: b"\x03", 54: SERVER.packed,
                                                     50: ip.packed}))
        assert isinstance(decision, policy.DhcpRequest)
        await self.server.answers.request(decision, cast(asyncio.DatagramTransport, None))
        return self._answer()

    async def lease(self, mac: MacAddress) -> IPv4Address:
        offer = self.discover(mac)
        assert offer is not None
        ack = await self.request(mac, offer.yiaddr)
        assert ack is not None and ack.message_type is not None
        assert ack.message_type.name == "ACK"
        return ack.yiaddr


def lease_time(reply: DhcpPacket) -> int:
    value: int = struct.unpack("!I", reply.options[51])[0]
    return value


@pytest.fixture
async def store_and_harness(request: pytest.FixtureRequest
                            ) -> AsyncIterator[tuple[FlakyStore, Harness]]:
    threshold = getattr(request, "param", 0.25)
    store = FlakyStore()
    async with _harness(store, threshold) as harness:
        yield store, harness
    await store.close()


@contextlib.asynccontextmanager
async def _harness(store: KeyValueStore, threshold: float) -> AsyncIterator[Harness]:
    settings = DhcpSettings(mode="full", server_ip=str(SERVER), lease_time=LEASE_TIME,
                            lease_cache_threshold=threshold,
                            subnets=(SubnetSettings(network="10.30.0.0/24"),))
    clock = Clock()
    inventory = Inventory(store)
    server = DhcpServer(settings, inventory, clock=clock)
    sent = Sent()
    server.answers._sender = sent  # type: ignore[assignment]
    await server.leases.start()
    try:
        yield Harness(server, clock, sent)
    finally:
        await server.leases.stop()
        await inventory.stop()


async def test_a_fresh_lease_is_acked_again_without_a_write(
        store_and_harness: tuple[FlakyStore, Harness]) -> None:
    store, h = store_and_harness
    ip = await h.lease(OLD_MAC)
    assert store.lease_writes == 1
    h.clock.now += 300  # 700 s of 1000 left: above 0.25
    ack = await h.request(OLD_MAC, ip)
    assert ack is not None and ack.yiaddr == ip
    assert lease_time(ack) == LEASE_TIME - 300  # what is left of the recorded lease
    assert store.lease_writes == 1
    assert h.counters["lease_cached"] == 1


async def test_a_lease_below_the_threshold_is_written_again(
        store_and_harness: tuple[FlakyStore, Harness]) -> None:
    store, h = store_and_harness
    ip = await h.lease(OLD_MAC)
    h.clock.now += 800  # 200 s of 1000 left: below 0.25
    ack = await h.request(OLD_MAC, ip)
    assert ack is not None and lease_time(ack) == LEASE_TIME
    assert store.lease_writes == 2
    assert h.counters.get("lease_cached", 0) == 0


@pytest.mark.parametrize("store_and_harness", [0.0], indirect=True)
async def test_threshold_zero_writes_every_request(
        store_and_harness: tuple[FlakyStore, Harness]) -> None:
    store, h = store_and_harness
    ip = await h.lease(OLD_MAC)
    h.clock.now += 10
    ack = await h.request(OLD_MAC, ip)
    assert ack is not None and lease_time(ack) == LEASE_TIME
    assert store.lease_writes == 2


async def test_store_down_leased_mac_served_new_mac_not(
        store_and_harness: tuple[FlakyStore, Harness]) -> None:
    store, h = store_and_harness
    ip = await h.lease(OLD_MAC)
    h.clock.now += 900  # 100 s left: below the threshold, above MIN_CACHED_LEASE
    store.down = True
    assert not await h.server.leases.probe(1.0)
    offer = h.discover(OLD_MAC)
    assert offer is not None and offer.yiaddr == ip
    ack = await h.request(OLD_MAC, ip)
    assert ack is not None and ack.yiaddr == ip and lease_time(ack) == 100
    assert h.discover(NEW_MAC) is None
    assert await h.request(NEW_MAC, IPv4Address("10.30.0.99")) is None
    counters = h.counters
    assert counters["lease_cached:store_down"] == 1
    assert counters["offer_withheld:store_down"] == 1
    assert counters["ack_withheld:store_down"] == 1
    h.clock.now += 50  # 50 s left: too little to promise
    assert h.discover(OLD_MAC) is None
    store.down = False
    assert await h.server.leases.probe(1.0)
    assert h.discover(NEW_MAC) is not None


async def test_a_write_that_fails_falls_back_to_the_recorded_lease(
        store_and_harness: tuple[FlakyStore, Harness]) -> None:
    """The store died and no probe has said so yet: the write fails, the ACK comes from the
    recorded lease, and the book knows the store is down."""
    store, h = store_and_harness
    ip = await h.lease(OLD_MAC)
    h.clock.now += 800
    store.down = True
    ack = await h.request(OLD_MAC, ip)
    assert ack is not None and lease_time(ack) == 200
    assert not h.server.leases.store_up
    assert h.counters["lease_cached:store_down"] == 1


async def _down(h: Harness) -> bool:
    return not await h.server.leases.probe(1.0)


@pytest.mark.etcd
async def test_real_etcd_stopped(tmp_path: Path) -> None:
    from provisioner.store.etcd import EtcdStore

    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    store = EtcdStore([etcd.endpoint], namespace="/leasecache", timeout=1.0)
    try:
        async with _harness(store, 0.25) as h:
            ip = await h.lease(OLD_MAC)
            etcd.kill()
            await eventually(lambda: _down(h), "the probe finds etcd gone", timeout=20)
            h.clock.now += 900
            offer = h.discover(OLD_MAC)
            assert offer is not None and offer.yiaddr == ip
            ack = await h.request(OLD_MAC, ip)
            assert ack is not None and ack.yiaddr == ip and lease_time(ack) == 100
            assert h.discover(NEW_MAC) is None
            counters = h.counters
            assert counters["lease_cached:store_down"] == 1
            assert counters["offer_withheld:store_down"] == 1
            etcd.restart()
            await eventually(lambda: h.server.leases.probe(2.0), "etcd answers", timeout=30,
                             interval=0.5)
            assert await h.request(OLD_MAC, ip) is not None  # written again: 100 s < 250 s
            assert h.discover(NEW_MAC) is not None
    finally:
        await store.close()
        etcd.stop()


async def test_the_probe_task_follows_the_store(
        store_and_harness: tuple[FlakyStore, Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's probe loop marks the store down within a probe, and up again."""
    monkeypatch.setattr("provisioner.dhcp.server.PROBE_EVERY", 0.01)
    store, h = store_and_harness
    probe = asyncio.create_task(h.server._probe_store())
    try:
        store.down = True
        await eventually(lambda: not h.server.leases.store_up, "the store is seen down")
        store.down = False
        await eventually(lambda: h.server.leases.store_up, "the store is seen up")
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
