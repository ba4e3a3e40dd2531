"""The DHCP server: thin asyncio glue around the pure codec and policy.

One packet in, one decision out (policy.classify); this module only looks things up in memory
(inventory, leases), awaits the store where a decision needs a durable write (a binding before
its ACK, a discovered node), and sends. Malformed packets are dropped and counted by reason and
never stop the loop. An OFFER needs no write, so DISCOVERs are answered without awaiting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp import policy
from provisioner.dhcp.leases import LeaseBook, Pool
from provisioner.dhcp.options import MessageType, Opt, encode_text
from provisioner.dhcp.packet import DhcpPacket, decode, encode
from provisioner.dhcp.sockets import RawSender, interface_address, open_raw_sender, server_socket
from provisioner.errors import ConfigError, Conflict, MalformedPacket, ProvisionerError
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import (
    BootEvent,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    effective_values,
)

log = logging.getLogger(__name__)
_ZERO = IPv4Address(0)
_ANY = "0.0.0.0"
BURST = 64  # datagrams read per wake-up of the loop
RECV_SIZE = 65536  # over the largest UDP payload: oversized datagrams arrive whole and are dropped
BACKLOG = 4096  # replies queued while the socket's send buffer is full; more are dropped
COALESCE = 0.002  # s a busy socket rests between reads, so that wake-ups find bursts
COALESCE_BELOW = 32  # a wake-up that found this many packets or more is busy enough already


@dataclass(frozen=True, slots=True)
class Subnet:
    network: IPv4Network
    pool: Pool
    relay: IPv4Address | None
    options: dict[int, bytes]


def plan_subnet(settings: SubnetSettings) -> Subnet:
    network = IPv4Network(settings.network)
    default_first = network[min(10, network.num_addresses - 2)]
    first = IPv4Address(settings.pool_start) if settings.pool_start else default_first
    last = IPv4Address(settings.pool_end) if settings.pool_end else network[-2]
    options = policy.subnet_options(
        network, routers=[IPv4Address(a) for a in settings.routers],
        dns=[IPv4Address(a) for a in settings.dns], domain=settings.domain or None,
        mtu=settings.mtu or None, ntp=[IPv4Address(a) for a in settings.ntp])
    return Subnet(network, Pool(first, last), IPv4Address(settings.relay) if settings.relay
                  else None, options)


class DhcpServer:
    def __init__(self, settings: DhcpSettings, inventory: Inventory, *, boot_port: int = 80,
                 boot_host: str | None = None,
                 defaults: dict[str, SettingValue] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.inventory = inventory
        self.counters: collections.Counter[str] = collections.Counter()
        self.leases = LeaseBook(inventory, offer_hold=settings.offer_hold,
                                reserved=self._reserved_for)
        self.subnets = [plan_subnet(s) for s in settings.subnets]
        self.boot = policy.BootSettings(settings.bios_file, settings.uefi_x64_file,
                                        settings.uefi_arm64_file, boot_host, boot_port)
        self.circuits = dict(entry.split("=", 1) for entry in settings.circuit_names)
        self.defaults = defaults or {}
        self.server_ip = _ZERO
        self._clock = clock
        self._segment = policy.Segment(frozenset(), frozenset(
            s.relay for s in self.subnets if s.relay is not None), policy.Mode(settings.mode))
        self._transports: list[asyncio.DatagramTransport] = []
        self._raw: RawSender | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._discovering: set[MacAddress] = set()
        self._discovery_lock = asyncio.Lock()
        self._foreign_seen: dict[IPv4Address, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if not s.server_ip and not s.interface:
            raise ConfigError("dhcp: set [dhcp] interface (the provisioning network) or server_ip")
        self.server_ip = (IPv4Address(s.server_ip) if s.server_ip
                          else interface_address(s.interface))
        self._segment = policy.Segment(frozenset({self.server_ip}), self._segment.relays,
                                       self._segment.mode)
        await self.leases.start()
        # Its own task, not in _tasks: those are requests in flight, this runs until close.
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_holds())
        await self._listen(s.port, pxe_port=False, unicast=s.listen != _ANY)
        if s.listen == _ANY and self._segment.mode is policy.Mode.FULL:
            await self._listen_unicast(s.port)
        if self._segment.mode is policy.Mode.PROXY:
            await self._listen(policy.PXE_PORT, pxe_port=True)
        if s.detect_other_servers and s.interface:
            try:
                await self._listen(policy.CLIENT_PORT, pxe_port=False)
            except OSError as exc:
                log.warning("dhcp: cannot watch port 68 for other servers: %s", exc)
        self._raw = open_raw_sender(s.interface)
        log.info("dhcp: %s mode on %s (%s), server %s, %d subnet(s)%s", s.mode,
                 s.interface or "all interfaces", s.listen, self.server_ip, len(self.subnets),
                 "" if self._raw else "; no CAP_NET_RAW: unicast replies are broadcast")

    async def _listen(self, port: int, *, pxe_port: bool, unicast: bool = False,
                      address: str | None = None) -> None:
        sock = server_socket(self.settings.interface or None, address or self.settings.listen,
                             port)
        self._transports.append(_Socket(self, sock, pxe_port, unicast,
                                        asyncio.get_running_loop()))

    async def _listen_unicast(self, port: int) -> None:
        """A second socket on our own address, beside the one on 0.0.0.0: the kernel gives a
        datagram sent to our address to the socket bound to it, and a broadcast only to the
        wildcard one, so the socket a REQUEST arrives on tells RENEWING (unicast to us) from
        REBINDING (broadcast), RFC 2131 section 4.3.2, at no cost per packet."""
        try:
            await self._listen(port, pxe_port=False, unicast=True, address=str(self.server_ip))
        except OSError as exc:
            log.warning("dhcp: cannot listen on %s:%d (%s); renewals are logged as rebinding",
                        self.server_ip, port, exc)

    async def _sweep_holds(self) -> None:
        """Forget offers whose hold has run out, so a flood of DISCOVERs from made-up MACs
        cannot grow the hold table past what one offer_hold period brings in."""
        while True:
            await asyncio.sleep(max(self.settings.offer_hold / 2, 1.0))
            self.leases.expire_holds(self._clock())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for transport in self._transports:
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.leases.stop()
        if self._raw is not None:
            self._raw.close()

    # -- one packet ------------------------------------------------------------------------

    def handle(self, data: bytes, source: tuple[str, int], transport: asyncio.DatagramTransport,
               pxe_port: bool, unicast: bool = False) -> None:
        try:
            packet = decode(data)
        except MalformedPacket as exc:
            self.counters[f"dropped:{exc.reason}"] += 1
            log.debug("dhcp: dropped %d bytes from %s:%d: %s", len(data), *source, exc.reason)
            return
        # A relay forwards a broadcast REBINDING to us unicast (RFC 1542 section 4.1.1); a
        # RENEWING client sends straight to us, without a relay.
        decision = policy.classify(packet, self._segment, pxe_port=pxe_port,
                                   unicast=unicast and packet.giaddr == _ZERO)
        self.counters[_received_key(type(decision))] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dhcp: %s from %s xid %08x -> %s", packet.message_type, packet.mac,
                      packet.xid, decision)
        self._dispatch(decision, transport, source)

    def _dispatch(self, decision: policy.Decision, transport: asyncio.DatagramTransport,
                  source: tuple[str, int]) -> None:
        match decision:
            case policy.Ignore(reason):
                self.counters[f"ignored:{reason}"] += 1
            case policy.Discover():
                self._on_discover(decision, transport)
            case policy.Request():
                self._spawn(self._on_request(decision, transport))
            case policy.Decline() | policy.Release():
                self._spawn(self._on_end(decision))
            case policy.Inform():
                self._on_inform(decision, transport)
            case policy.BootServerRequest():
                self._on_boot_server(decision, transport, source)
            case policy.ForeignServerReply():
                self._on_foreign(decision)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.counters["errors"] += 1
            if isinstance(exc, ProvisionerError):
                log.warning("dhcp: %s", exc)
            else:
                log.error("dhcp: bug while answering", exc_info=exc)

    # -- decisions -------------------------------------------------------------------------

    def _subnet_for(self, packet: DhcpPacket) -> Subnet | None:
        """RFC 2131 4.3.1: the relay's giaddr selects the subnet; else the attached one. A
        subnet naming giaddr as its relay wins over one whose network merely contains it."""
        giaddr = packet.giaddr
        if giaddr != _ZERO:
            for subnet in self.subnets:
                if subnet.relay == giaddr:
                    return subnet
        for subnet in self.subnets:
            if giaddr == _ZERO and subnet.relay is None:
                return subnet
            if giaddr != _ZERO and giaddr in subnet.network:
                return subnet
        return None

    def _reserved_for(self, ip: IPv4Address) -> MacAddress | None:
        node = self.inventory.node_by_ip(ip)
        return node.mac if node is not None else None

    def _on_discover(self, decision: policy.Discover, transport: asyncio.DatagramTransport,
                     node: Node | None = None) -> None:
        packet, mac = decision.packet, decision.mac
        if self._segment.mode is policy.Mode.PROXY:
            self._proxy_answer(packet, mac, transport, None)
            return
        subnet = self._subnet_for(packet)
        if subnet is None:
            self.counters["ignored:no_subnet"] += 1
            return
        node = node or self.inventory.node_by_mac(mac)
        if node is None and self.settings.discovery:
            self._discover_node(decision, subnet, transport)
            return
        now = self._clock()
        ip = self.leases.offer(mac, subnet.pool, now, requested=decision.requested_ip,
                               reserved=node.ip if node else None)
        if ip is None:
            self.counters["pool_exhausted"] += 1
            log.warning("dhcp: no free address for %s in %s", mac, subnet.network)
            return
        grant = self._grant(subnet, ip, node)
        boot = self._boot_info(packet, mac, node)
        reply = policy.offer_reply(packet, self.server_ip, grant, boot)
        self._send(packet, reply, transport)
        if node is not None:
            self._record(mac, "dhcp_offered", {"ip": str(ip), "firmware": str(
                policy.classify_firmware(packet))})

    def _grant(self, subnet: Subnet, ip: IPv4Address, node: Node | None) -> policy.Grant:
        options = subnet.options
        if node is not None:  # RFC 2132 3.14: the node's name, so its OS knows who it is
            options = {**options, Opt.HOST_NAME.value: encode_text(node.name)}
        return policy.Grant(ip, self.settings.lease_time, options)

    def _boot_info(self, packet: DhcpPacket, mac: MacAddress,
                   node: Node | None) -> policy.BootInfo | None:
        override = None
        if node is not None:
            value = self._effective(node).get("bootfile")
            override = str(value) if value else None
        return policy.boot_file(policy.classify_firmware(packet), self.boot, server=self.server_ip,
                                mac=mac, arch=policy.client_arch(packet), override=override)

    def _effective(self, node: Node) -> dict[str, SettingValue]:
        return effective_values(node, self.inventory.cached_groups(), self.defaults)

    async def _on_request(self, decision: policy.Request,
                          transport: asyncio.DatagramTransport) -> None:
        packet, mac, address = decision.packet, decision.mac, decision.address
        subnet = self._subnet_for(packet)
        node = self.inventory.node_by_mac(mac)
        verdict = self._check_request(decision, subnet, node)
        if verdict == "silent":
            self.counters["request_silent"] += 1
            return
        if verdict is not None or subnet is None:
            self._send(packet, policy.nak_reply(packet, self.server_ip, verdict or "no subnet"),
                       transport)
            return
        lease = await self.leases.bind(mac, address, self._clock(), self.settings.lease_time,
                                       hostname=node.name if node else None)
        if lease is None:
            self._send(packet, policy.nak_reply(packet, self.server_ip, "address taken"),
                       transport)
            return
        grant = self._grant(subnet, address, node)
        boot = self._boot_info(packet, mac, node)
        reply = policy.ack_reply(packet, self.server_ip, grant, boot)
        self._send(packet, reply, transport)
        if node is not None:
            self._record(mac, "dhcp_acked", {"ip": str(address), "state": decision.state.value})

    def _check_request(self, decision: policy.Request, subnet: Subnet | None,
                       node: Node | None) -> str | None:
        """None to bind; a NAK message; or "silent" (RFC 2131 4.3.2: no record, no answer)."""
        address, state = decision.address, decision.state
        if subnet is None or address not in subnet.network:
            return "wrong network"
        if node is not None and node.ip is not None and address != node.ip:
            return f"{node.name} is reserved {node.ip}"
        if state is policy.RequestState.SELECTING:
            return None
        known = self.leases.lease_of(decision.mac)
        if known is None and node is None:
            # INIT-REBOOT or REBINDING from a client we have no record of: stay silent so a
            # server that does know it can answer.
            return "silent"
        if known is not None and known.ip != address and (node is None or node.ip is None):
            return f"your address is {known.ip}"
        return None

    async def _on_end(self, decision: policy.Decline | policy.Release) -> None:
        quarantine = self.settings.decline_time if isinstance(decision, policy.Decline) else 0
        done = await self.leases.end(decision.mac, decision.address, self._clock(),
                                     quarantine=quarantine)
        kind = "declined" if quarantine else "released"
        self.counters[f"lease_{kind}"] += int(done)
        if quarantine and done:
            log.warning("dhcp: %s declined %s (in use?); quarantined for %ds", decision.mac,
                        decision.address, quarantine)
        elif quarantine:
            log.warning("dhcp: %s declined %s, which is not its lease; ignored", decision.mac,
                        decision.address)

    def _on_inform(self, decision: policy.Inform, transport: asyncio.DatagramTransport) -> None:
        subnet = self._subnet_for(decision.packet)
        options = subnet.options if subnet else {}
        node = self.inventory.node_by_mac(decision.mac)
        boot = self._boot_info(decision.packet, decision.mac, node)
        self._send(decision.packet, policy.inform_reply(decision.packet, self.server_ip, options,
                                                        boot), transport)

    # -- proxy mode and port 4011 ------------------------------------------------------------

    def _on_boot_server(self, decision: policy.BootServerRequest,
                        transport: asyncio.DatagramTransport, source: tuple[str, int]) -> None:
        origin = (IPv4Address(source[0]), source[1])
        self._proxy_answer(decision.packet, decision.mac, transport, origin)

    def _proxy_answer(self, packet: DhcpPacket, mac: MacAddress,
                      transport: asyncio.DatagramTransport,
                      origin: tuple[IPv4Address, int] | None) -> None:
        node = self.inventory.node_by_mac(mac)
        boot = self._boot_info(packet, mac, node)
        if boot is None:
            self.counters["ignored:no_boot_file"] += 1
            return
        firmware = policy.classify_firmware(packet)
        reply = policy.proxy_reply(packet, self.server_ip, boot, firmware)
        self._send(packet, reply, transport, origin)

    # -- discovery -------------------------------------------------------------------------

    def _discover_node(self, decision: policy.Discover, subnet: Subnet,
                       transport: asyncio.DatagramTransport) -> None:
        mac = decision.mac
        if mac in self._discovering:
            return  # a retransmitted DISCOVER while the node is being added
        ip = self.leases.choose(mac, subnet.pool, self._clock(),
                                requested=decision.requested_ip)
        name = self._discovered_name(decision.packet)
        if self.settings.discovery_dry_run:
            self.counters["discovery_dry_run"] += 1
            log.info("dhcp: discovery (dry run): would add %s as %s with %s, not answering",
                     mac, name or self.settings.name_pattern, ip)
            return
        if ip is None:
            self.counters["pool_exhausted"] += 1
            return
        # Held for this MAC while its node is stored, so that a DISCOVER from another unknown
        # MAC meanwhile cannot choose the same address.
        self.leases.offer(mac, subnet.pool, self._clock(), reserved=ip)
        self._discovering.add(mac)
        self._spawn(self._add_discovered(decision, ip, name, transport))

    def _discovered_name(self, packet: DhcpPacket) -> str | None:
        circuit = policy.relay_agent_circuit(packet)
        if circuit is not None:
            return self.circuits.get(circuit.decode("ascii", "replace"))
        return None

    async def _add_discovered(self, decision: policy.Discover, ip: IPv4Address,
                              name: str | None, transport: asyncio.DatagramTransport) -> None:
        # One at a time: two concurrent add_node calls for the same next name can both succeed
        # (Inventory._claim_name takes over a claim whose node is not stored yet).
        async with self._discovery_lock:
            await self._add_discovered_node(decision, ip, name, transport)

    async def _add_discovered_node(self, decision: policy.Discover, ip: IPv4Address,
                                   name: str | None,
                                   transport: asyncio.DatagramTransport) -> None:
        mac = decision.mac
        firmware = policy.classify_firmware(decision.packet)
        try:
            for index in range(1, 100_000):
                candidate = name or self.settings.name_pattern.format(index=index)
                if name is None and self.inventory.node_by_name(candidate) is not None:
                    continue
                node = Node(mac, candidate, ip=ip, state=NodeState.DISCOVERED, firmware=firmware)
                try:
                    await self.inventory.add_node(node)
                except Conflict:
                    if name is not None:
                        raise
                    continue
                self.counters["discovered"] += 1
                log.info("dhcp: discovered %s as %s with %s", mac, node.name, ip)
                self._record(mac, "discovered", {"name": node.name, "ip": str(ip)})
                self._on_discover(decision, transport, node)
                return
        finally:
            self._discovering.discard(mac)

    # -- other servers -------------------------------------------------------------------

    def _on_foreign(self, decision: policy.ForeignServerReply) -> None:
        if decision.server == self.server_ip:
            return  # our own broadcast, heard on port 68
        self.counters["foreign_server"] += 1
        now = self._clock()
        if now - self._foreign_seen.get(decision.server, 0.0) < 60:
            return  # log and record once a minute per server
        self._foreign_seen[decision.server] = now
        mac = decision.packet.mac
        log.warning("dhcp: another DHCP server %s sent %s to %s on this segment", decision.server,
                    decision.message_type.name, mac)
        if mac is not None:
            self._record(mac, "foreign_dhcp_server", {"server": str(decision.server),
                                                      "message": decision.message_type.name})

    # -- output ----------------------------------------------------------------------------

    def _send(self, request: DhcpPacket, reply: DhcpPacket,
              transport: asyncio.DatagramTransport,
              origin: tuple[IPv4Address, int] | None = None) -> None:
        data = encode(reply)
        dest = policy.reply_destination(request, reply, source=origin)
        self.counters[_SENT_KEY[reply.message_type]] += 1
        if dest.raw and self._raw is not None:
            try:
                self._raw.send(request.chaddr[:6], self.server_ip, dest.ip, data)
                return
            except OSError as exc:
                log.debug("dhcp: raw send failed (%s); broadcasting", exc)
        ip = "255.255.255.255" if dest.raw else _text(dest.ip)
        transport.sendto(data, (ip, dest.port))

    def _record(self, mac: MacAddress, kind: str, detail: dict[str, object]) -> None:
        self._spawn(self.inventory.add_event(BootEvent(mac, kind, self._clock(), detail)))


_SENT_KEY: dict[MessageType | None, str] = {
    None: "sent:bootp", **{m: f"sent:{m.name.lower()}" for m in MessageType}}
_RECEIVED_KEY: dict[type, str] = {}
_TEXT: dict[IPv4Address, str] = {}


def _received_key(kind: type) -> str:
    key = _RECEIVED_KEY.get(kind)
    if key is None:
        key = _RECEIVED_KEY[kind] = f"received:{kind.__name__.lower()}"
    return key


def _text(ip: IPv4Address) -> str:
    """str(ip), remembered: formatting an address costs more than the rest of a send."""
    text = _TEXT.get(ip)
    if text is None:
        if len(_TEXT) >= 4096:
            _TEXT.clear()
        text = _TEXT[ip] = str(ip)
    return text


class _Socket(asyncio.DatagramTransport):
    """One server socket, read in bursts. asyncio's datagram transport reads one datagram per
    wake-up of the loop (an epoll_wait and a callback each); here every wake-up drains up to
    BURST datagrams, so under load the loop's cost is shared by a burst of packets. Replies are
    sent at once; only if the socket buffer is full are they queued until it drains."""

    def __init__(self, server: DhcpServer, sock: socket.socket, pxe_port: bool, unicast: bool,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._server = server
        self._sock = sock
        self._pxe_port = pxe_port
        self._unicast = unicast  # bound to our own address: what arrives was sent to it
        self._loop = loop
        self._backlog: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None  # reading paused by _coalesce, until
        self._last_wakeup = float("-inf")
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock, handle, pxe_port, unicast = (self._sock, self._server.handle, self._pxe_port,
                                           self._unicast)
        count = 0
        for _ in range(BURST):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("dhcp: socket error: %s", exc)
                break
            count += 1
            try:
                handle(data, (addr[0], addr[1]), self, pxe_port, unicast)
            except Exception:  # one bad packet must not stop the others
                self._server.counters["errors"] += 1
                log.exception("dhcp: bug while handling a packet")
        self._coalesce(count)

    def _coalesce(self, count: int) -> None:
        """Under a steady stream, wait COALESCE s before reading again, so that the next wake-up
        finds a burst rather than one packet: most of a packet's cost was the wake-up around it
        (epoll, the loop's turn, the failed read that ends the burst); this cut the server's
        CPU per DORA by 9-36% at 3,500 DORA/s (bench/dhcp_results.md), for 1-2 ms more at the
        median. Only when wake-ups already come closer together than COALESCE and find few
        packets each: a lone client's exchange is never delayed."""
        now = self._loop.time()
        recent, self._last_wakeup = now - self._last_wakeup < COALESCE, now
        if recent and 0 < count < COALESCE_BELOW and not self._closed and self._paused is None:
            self._loop.remove_reader(self._sock.fileno())
            self._paused = self._loop.call_later(COALESCE, self._resume)
            self._server.counters["read_pauses"] += 1

    def _resume(self) -> None:
        self._paused = None
        # The read after a rest counts as following the wake-up before it: a stream that keeps
        # coming keeps the socket resting between reads, not every other one.
        self._last_wakeup = self._loop.time()
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._readable()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closed:
            return
        if not self._backlog:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._writable)
            except OSError as exc:
                log.debug("dhcp: send to %s failed: %s", addr, exc)
                return
        if len(self._backlog) >= BACKLOG:
            self._server.counters["dropped:send_backlog"] += 1
            return
        self._backlog.append((bytes(data), addr))

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dhcp: send to %s failed: %s", addr, exc)
            self._backlog.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        self._loop.remove_reader(self._sock.fileno())
        if self._backlog:
            self._loop.remove_writer(self._sock.fileno())
            self._backlog.clear()
        self._sock.close()
