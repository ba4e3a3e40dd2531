"""Head nodes in one test process, for the tests of several heads on one etcd: each `Head` is
a DhcpServer with its own Inventory, store connection and Membership, on its own loopback
address (all of 127/8 is routed to lo); `Relay` is a DHCP relay agent on another loopback
address that sends each client message to every head, as a broadcast reaches every head on a
segment, and reads their answers (RFC 2131 section 4.1: a server answers a relay at its giaddr,
port 67; the tests run as root). `StoreLink` is a TCP forwarder between one head and etcd that
a test cuts and heals: a partition of that head alone, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp.packet import DhcpPacket, decode
from provisioner.dhcp.server import DhcpServer
from provisioner.ha.membership import Membership
from provisioner.ha.records import HeadRecord
from provisioner.inventory.repository import Inventory
from provisioner.store.etcd import EtcdStore
from tests.dhcp.test_vectors import wire

TTL = 3.0
DISCOVER = [(53, b"\x01")]


def net_base() -> str:
    """A random 127.A.B: the heads are .1, .3, .5 ..., the relay .2."""
    return f"127.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Head:
    name: str
    ip: str
    port: int
    store: EtcdStore
    inventory: Inventory
    membership: Membership
    dhcp: DhcpServer
    running: bool = False

    @classmethod
    def make(cls, name: str, ip: str, endpoint: str, namespace: str, relay: str) -> Head:
        """A head at `ip` (127.A.B.x) whose pool is 127.A.B.100-250: every reply, even one
        unicast to a client's address (a renewal's ACK), stays on loopback. The subnet is
        the attached one (a renewal comes without giaddr) and the relay is trusted."""
        port = free_udp_port(ip)
        store = EtcdStore([endpoint], namespace=namespace, timeout=1.0)
        inventory = Inventory(store)
        base = ip.rsplit(".", 1)[0]
        subnet = SubnetSettings(network=f"{base}.0/24", pool_start=f"{base}.100",
                                pool_end=f"{base}.250")
        settings = DhcpSettings(mode="full", listen=ip, port=port, server_ip=ip,
                                subnets=(subnet,), trusted_relays=(relay,),
                                detect_other_servers=False, mac_burst=1000)
        membership = Membership(store, HeadRecord(name, ip, "", "", time.time()), TTL)
        return cls(name, ip, port, store, inventory, membership,
                   DhcpServer(settings, inventory, share=membership))

    async def start(self) -> None:
        await self.inventory.start()
        await self.membership.start()
        await self.dhcp.start()
        self.running = True

    async def die(self) -> None:
        """Stop as a killed process would: no revoke; its renewals and answers just stop."""
        if self.membership._keeper is not None:
            await self.membership._keeper.stop()
        await self.close(revoke=False)

    async def close(self, *, revoke: bool = True) -> None:
        if not self.running:
            return
        self.running = False
        await self.dhcp.close()
        if revoke:
            await self.membership.stop()
        else:
            await self.membership._follower.stop()
        await self.inventory.stop()
        await self.store.close()


@dataclass
class Relay:
    """A relay agent at `ip`:67 that forwards client messages to every head."""

    ip: str
    heads: list[Head]
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ip, 67))
        self.sock.setblocking(False)

    def discover(self, mac: bytes, xid: int) -> None:
        data = wire(DISCOVER, xid=xid, chaddr=mac, giaddr=self.ip)
        for head in self.heads:
            if head.running:
                self.sock.sendto(data, (head.ip, head.port))

    def send_to(self, head: Head, data: bytes) -> None:
        self.sock.sendto(data, (head.ip, head.port))

    async def replies(self, wait: float, enough: int = 0) -> list[tuple[DhcpPacket, str]]:
        """Every answer that arrives within `wait` s (or the first `enough` of them), with the
        address of the head it came from."""
        loop = asyncio.get_running_loop()
        got: list[tuple[DhcpPacket, str]] = []
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), left)
            except TimeoutError:
                break
            got.append((decode(data), source[0]))
            if len(got) == enough:
                break
        return got

    def close(self) -> None:
        self.sock.close()


class StoreLink:
    """A TCP forwarder from a loopback port to etcd at `target`: `cut()` drops every
    connection and resets new ones, `heal()` forwards again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()

    def heal(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:  # cut: the connection is reset at once, as a rejecting firewall does
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while self.up and (chunk := await reader.read(65536)):
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()


def namespace() -> str:
    return f"/ha-{uuid.uuid4().hex[:8]}"


def offer_ip(packet: DhcpPacket) -> IPv4Address:
    return packet.yiaddr
