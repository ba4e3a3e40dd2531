"""The DHCP server: thin asyncio glue around the pure codec and policy.

One packet in, one decision out (policy.classify). This module owns the lifecycle (sockets,
the hold sweeper, close) and hands each decision to the part that acts on it:

- transport.py  the receive loop: each socket read in bursts, its send queue
- answers.py    what each client message gets (discovery.py for unknown MACs)
- send.py       the reply path: encode, destination (RFC 2131 section 4.1), raw or UDP send
- leases.py     offers in memory, bindings written to the store before their ACK
- inflight.py   the exchanges awaiting the store, cancelled on close
- sightings.py  proxy mode: the address each PXE client showed us, for the boot plane
- ratelimit.py  a token bucket per chaddr: a flooding MAC is dropped before any decision
- counters.py   the counter names

With several heads on one store (ha/membership.py) each head answers only its share of the
clients (`ClientShare`, see `_ours`).

Malformed packets are dropped and counted by reason and never stop the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp import policy
from provisioner.dhcp.answers import Answers
from provisioner.dhcp.bootfile import FirstStageFiles
from provisioner.dhcp.counters import Counters, received_key
from provisioner.dhcp.inflight import InFlight
from provisioner.dhcp.leases import LeaseBook
from provisioner.dhcp.packet import BOOTREQUEST, DhcpPacket, decode
from provisioner.dhcp.ratelimit import MacRateLimit
from provisioner.dhcp.replies import CLIENT_PORT
from provisioner.dhcp.send import ReplySender
from provisioner.dhcp.sightings import Sightings, sighted_address
from provisioner.dhcp.sockets import interface_address, open_raw_sender, server_socket
from provisioner.dhcp.subnets import (
    Pool,
    Subnet,
    relay_info_trusted,
    subnet_options,
    without_relay_info,
)
from provisioner.dhcp.transport import BurstTransport
from provisioner.errors import ConfigError, MalformedPacket, ProvisionerError
from provisioner.inventory.repository import Inventory
from provisioner.limits import OncePer
from provisioner.metrics import hooks
from provisioner.nodes.model import MacAddress, SettingValue
from provisioner.runtime import supervisor

log = logging.getLogger(__name__)
_ZERO = IPv4Address(0)
RELAY_INFO_LOG_EVERY = 60.0  # s: an untrusted option 82 is logged once a minute per source
RATE_LOG_EVERY = 60.0  # s: a rate-limited MAC is logged once a minute
EXPIRE_EVERY = 60.0  # s: discovered nodes past their discovery_ttl are looked for this often
PROBE_EVERY = 2.0  # s: how often the store is asked whether it answers (leases.py)
_ANY = "0.0.0.0"


class ClientShare(Protocol):
    """This head's share of the DHCP clients when several heads share the store."""

    @property
    def fenced(self) -> str | None:
        """Why this head may not hand out new leases now; None when it may."""
        ...

    def owns(self, chaddr: bytes) -> bool:
        """Whether the client with this hardware address (hlen bytes) is this head's."""
        ...


def plan_subnet(settings: SubnetSettings) -> Subnet:
    """A [[dhcp.subnets]] entry, ready to serve: the pool defaults to .10 to the last host."""
    network = IPv4Network(settings.network)
    default_first = network[min(10, network.num_addresses - 2)]
    first = IPv4Address(settings.pool_start) if settings.pool_start else default_first
    last = IPv4Address(settings.pool_end) if settings.pool_end else network[-2]
    options = subnet_options(
        network, routers=[IPv4Address(a) for a in settings.routers],
        dns=[IPv4Address(a) for a in settings.dns], domain=settings.domain or None,
        mtu=settings.mtu or None, ntp=[IPv4Address(a) for a in settings.ntp])
    return Subnet(network, Pool(first, last), IPv4Address(settings.relay) if settings.relay
                  else None, options)


class DhcpServer:
    def __init__(self, settings: DhcpSettings, inventory: Inventory, *, boot_port: int = 80,
                 boot_host: str | None = None,
                 defaults: dict[str, SettingValue] | None = None,
                 clock: Callable[[], float] = time.time,
                 share: ClientShare | None = None) -> None:
        self.settings = settings
        #: with several heads, which clients are ours (None: every client)
        self.share = share
        self.inventory = inventory
        self.counters: Counters = Counters()
        self.leases = LeaseBook(inventory, offer_hold=settings.offer_hold,
                                reserved=self._reserved_for)
        self.subnets = [plan_subnet(s) for s in settings.subnets]
        files = FirstStageFiles(settings.bios_file, settings.uefi_x64_file,
                                settings.uefi_arm64_file, boot_host, boot_port)
        self._clock = clock
        # The relays we accept requests from are the ones whose option 82 we believe.
        self.trusted_relays = frozenset(
            {s.relay for s in self.subnets if s.relay is not None}
            | {IPv4Address(a) for a in settings.trusted_relays})
        self._segment = policy.Segment(frozenset(), self.trusted_relays,
                                       policy.DhcpMode(settings.mode))
        self._relay_info_log = OncePer(RELAY_INFO_LOG_EVERY)
        self.rate_limit = MacRateLimit(settings.mac_burst, settings.mac_rate, settings.mac_table)
        self._rate_log = OncePer(RATE_LOG_EVERY)
        #: proxy mode: the address each PXE client showed us (boot/binding.py binds to it)
        self.sightings = Sightings()
        self._transports: list[BurstTransport] = []
        self._in_flight = InFlight(self.counters)
        self._sender = ReplySender(self.counters)
        self._sweeper: supervisor.Supervised | None = None
        self._prober: supervisor.Supervised | None = None
        self.answers = Answers(settings, inventory, self.leases, self.subnets, files,
                               sender=self._sender, in_flight=self._in_flight,
                               counters=self.counters, defaults=defaults or {}, clock=clock)
        self.answers.fenced = self._fenced

    @property
    def server_ip(self) -> IPv4Address:
        """Our address on the segment (option 54); 0.0.0.0 until started."""
        return self._sender.server_ip

    @property
    def in_flight(self) -> int:
        """Exchanges awaiting the store (bindings, discovered nodes, events)."""
        return len(self._in_flight)

    @property
    def transports(self) -> tuple[BurstTransport, ...]:
        return tuple(self._transports)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if not s.server_ip and not s.interface:
            raise ConfigError("dhcp: set [dhcp] interface (the provisioning network) or server_ip")
        self._sender.server_ip = (IPv4Address(s.server_ip) if s.server_ip
                                  else interface_address(s.interface))
        self._segment = policy.Segment(frozenset({self.server_ip}), self._segment.relays,
                                       self._segment.mode)
        await self.leases.start()
        # Its own supervised task, not in flight: those are exchanges, this runs until close.
        self._sweeper = supervisor.ambient().spawn("dhcp hold sweeper", self._sweep_holds)
        self._prober = supervisor.ambient().spawn("dhcp store probe", self._probe_store)
        await self._listen(s.port, pxe_port=False, unicast=s.listen != _ANY)
        if s.listen == _ANY and self._segment.mode is policy.DhcpMode.FULL:
            await self._listen_unicast(s.port)
        if self._segment.mode is policy.DhcpMode.PROXY:
            await self._listen(policy.PXE_PORT, pxe_port=True)
        if s.detect_other_servers and s.interface:
            try:
                await self._listen(CLIENT_PORT, pxe_port=False)
            except OSError as exc:
                log.warning("dhcp: cannot watch port 68 for other servers: %s", exc)
        self._sender.raw = open_raw_sender(s.interface)
        log.info("dhcp: %s mode on %s (%s), server %s, %d subnet(s)%s", s.mode,
                 s.interface or "all interfaces", s.listen, self.server_ip, len(self.subnets),
                 "" if self._sender.raw else "; no CAP_NET_RAW: unicast replies are broadcast")

    async def _listen(self, port: int, *, pxe_port: bool, unicast: bool = False,
                      address: str | None = None) -> None:
        sock = server_socket(self.settings.interface or None, address or self.settings.listen,
                             port)
        self._transports.append(BurstTransport(sock, self.handle, self.counters,
                                               pxe_port=pxe_port, unicast=unicast,
                                               loop=asyncio.get_running_loop()))

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
        cannot grow the hold table past what one offer_hold period brings in; forget old
        sightings; once a minute, delete discovered nodes past their discovery_ttl."""
        expired_at = self._clock()
        while True:
            await asyncio.sleep(max(self.settings.offer_hold / 2, 1.0))
            now = self._clock()
            self.leases.expire_holds(now)
            self.sightings.expire(now)
            if self.settings.discovery and now - expired_at >= EXPIRE_EVERY:
                expired_at = now
                try:
                    await self.answers.discovery.expire()
                except ProvisionerError as exc:
                    log.warning("dhcp: expiring discovered nodes: %s", exc)

    async def _probe_store(self) -> None:
        """Keep LeaseBook.store_up true to the store, so an outage stops new offers within
        seconds, before any REQUEST has to find it out, and its end starts them again."""
        while True:
            await self.leases.probe(PROBE_EVERY)
            await asyncio.sleep(PROBE_EVERY)

    async def close(self) -> None:
        """Stop reading, cancel the exchanges in flight and wait for them, stop the lease
        watch, close every socket."""
        if self._sweeper is not None:
            await self._sweeper.stop()
        if self._prober is not None:
            await self._prober.stop()
        for transport in self._transports:
            transport.close()
        await self._in_flight.cancel()
        await self.leases.stop()
        self._sender.close()

    # -- one packet ------------------------------------------------------------------------

    def handle(self, data: bytes, source: tuple[str, int], transport: asyncio.DatagramTransport,
               pxe_port: bool, unicast: bool = False) -> None:
        try:
            packet = decode(data)
        except MalformedPacket as exc:
            self.counters[f"dropped:{exc.reason}"] += 1
            log.debug("dhcp: dropped %d bytes from %s:%d: %s", len(data), *source, exc.reason)
            return
        if packet.op == BOOTREQUEST and not self._within_rate(packet, source):
            return
        if 82 in packet.options and not relay_info_trusted(packet, self.trusted_relays):
            packet = self._untrusted_relay_info(packet, source)
        # A relay forwards a broadcast REBINDING to us unicast (RFC 1542 section 4.1.1); a
        # RENEWING client sends straight to us, without a relay.
        decision = policy.classify(packet, self._segment, pxe_port=pxe_port,
                                   unicast=unicast and packet.giaddr == _ZERO)
        self.counters[received_key(decision)] += 1
        if self._segment.mode is policy.DhcpMode.PROXY:
            self._sight(packet, decision, source, pxe_port)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dhcp: %s from %s xid %08x -> %s", packet.message_type, packet.mac,
                      packet.xid, decision)
        self._dispatch(decision, transport, source)

    def _within_rate(self, packet: DhcpPacket, source: tuple[str, int]) -> bool:
        """Whether the client's chaddr has a token left (ratelimit.py); if not, the request is
        dropped, counted, and logged once a minute per MAC."""
        now = self._clock()
        if self.rate_limit.allow(packet.chaddr, now):
            return True
        self.counters["rate_limited"] += 1
        hooks.refused("dhcp", "rate_limited")
        if self._rate_log.due(packet.chaddr, now):
            log.warning("dhcp: dropping requests from MAC %s (last from %s): more than %d at "
                        "once or %g a second ([dhcp] mac_burst, mac_rate; %d dropped so far)",
                        packet.mac or packet.chaddr.hex(), source[0], self.rate_limit.burst,
                        self.rate_limit.rate, self.counters["rate_limited"])
        return False

    def _untrusted_relay_info(self, packet: DhcpPacket,
                              source: tuple[str, int]) -> DhcpPacket:
        """Option 82 from a client, or through a relay the config does not list: dropped
        (relay_info_trusted says why), counted, logged once a minute per source; the request
        is otherwise answered as if it had come without it."""
        self.counters["relay_info_ignored"] += 1
        if self._relay_info_log.due(source[0], self._clock()):
            log.warning("dhcp: ignored option 82 (relay agent information) from %s, giaddr %s, "
                        "MAC %s: not a relay listed in [[dhcp.subnets]] relay or [dhcp] "
                        "trusted_relays (%d so far)", source[0], packet.giaddr, packet.mac,
                        self.counters["relay_info_ignored"])
        return without_relay_info(packet)

    def _sight(self, packet: DhcpPacket, decision: policy.Decision, source: tuple[str, int],
               pxe_port: bool) -> None:
        """Proxy mode: remember the address a PXE client's REQUEST shows (sightings.py). The
        broadcast REQUEST to the site server is classified proxy_mode (not ours to answer) but
        is a sighting all the same; any other Ignore (not PXE, unknown relay, ...) is not."""
        if isinstance(decision, policy.Ignore) and decision.reason != "proxy_mode":
            return
        mac = packet.mac
        try:
            origin = IPv4Address(source[0])
        except ValueError:
            origin = None
        ip = sighted_address(packet, pxe_port=pxe_port, source=origin)
        if mac is not None and ip is not None:
            self.sightings.saw(mac, ip, self._clock())
            self.counters["proxy_sightings"] += 1

    def _fenced(self) -> str | None:
        return self.share.fenced if self.share is not None else None

    def _ours(self, decision: policy.Decision) -> bool:
        """Whether this head answers `decision` (RFC 3074 load balancing over the heads).

        A broadcast that starts or restarts a binding (DISCOVER; REQUEST in INIT-REBOOT or
        REBINDING) is answered by the head that owns the client's bucket only; the others
        ignore it (RFC 3074 section 5). A REQUEST in SELECTING names its server (option 54),
        which policy.classify already checked is us: it answers our own OFFER. A RENEWING
        REQUEST is unicast to the server id the client was bound by (RFC 2131 section
        4.4.5), so it reaches the head that bound it whatever the buckets say now: that head
        answers it if the store shows the lease as the client's, as for any REQUEST
        (policy.check_request). A head that dies leaves its clients to rebind at T2 by
        broadcast, which the new owner of their bucket answers. Every binding is a
        compare-and-swap on the store (leases.py), so even two heads that disagree on the
        buckets cannot bind one address twice. A fenced head offers no new lease
        (answers.py), as when the store is down."""
        share = self.share
        if share is None:
            return True
        match decision:
            case policy.Discover(packet=packet) | policy.DhcpRequest(
                    packet=packet,
                    state=policy.RequestState.INIT_REBOOT | policy.RequestState.REBINDING):
                if share.owns(packet.chaddr[:packet.hlen]):
                    return True
                self.counters["ignored:other_head"] += 1
                return False
        return True

    def _dispatch(self, decision: policy.Decision, transport: asyncio.DatagramTransport,
                  source: tuple[str, int]) -> None:
        answers = self.answers
        if not self._ours(decision):
            return
        match decision:
            case policy.Ignore(reason):
                self.counters[f"ignored:{reason}"] += 1
            case policy.Discover():
                answers.discover(decision, transport)
            case policy.DhcpRequest():
                self._in_flight.spawn(answers.request(decision, transport))
            case policy.Decline() | policy.Release():
                self._in_flight.spawn(answers.end(decision))
            case policy.Inform():
                answers.inform(decision, transport)
            case policy.BootServerRequest():
                answers.boot_server(decision, transport, source)
            case policy.ForeignServerReply():
                answers.foreign(decision)

    def _reserved_for(self, ip: IPv4Address) -> MacAddress | None:
        node = self.inventory.node_by_ip(ip)
        return node.mac if node is not None else None
