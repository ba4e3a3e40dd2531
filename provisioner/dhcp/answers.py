"""What the DHCP server does with each client message policy.classify hands it: look the
client up in memory (inventory, leases), decide with the pure core, await the store only where
a decision needs a durable write (a binding before its ACK, a lease ended), and send the reply.
An OFFER needs no write, so DISCOVERs are answered without awaiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from provisioner.config import DhcpSettings
from provisioner.dhcp import policy
from provisioner.dhcp.bootfile import (
    BootInfo,
    FirstStageFiles,
    boot_file,
    classify_firmware,
    client_arch,
)
from provisioner.dhcp.counters import Counters
from provisioner.dhcp.discovery import Discovery
from provisioner.dhcp.inflight import InFlight
from provisioner.dhcp.leases import LeaseBook
from provisioner.dhcp.options import Opt, encode_text
from provisioner.dhcp.packet import DhcpPacket
from provisioner.dhcp.replies import (
    Grant,
    ack_reply,
    inform_reply,
    nak_reply,
    offer_reply,
    proxy_reply,
)
from provisioner.dhcp.send import ReplySender
from provisioner.dhcp.subnets import Subnet, subnet_for
from provisioner.errors import StoreUnavailable
from provisioner.inventory.repository import Inventory
from provisioner.limits import OncePer
from provisioner.nodes.model import (
    BootEvent,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    effective_values,
)

log = logging.getLogger(__name__)
FOREIGN_LOG_EVERY = 60.0  # s: another server is logged and recorded once a minute at most
MAC_LOG_EVERY = 60.0  # s: a MAC's DECLINEs, misplaced reservations: logged once a minute


class Answers:
    def __init__(self, settings: DhcpSettings, inventory: Inventory, leases: LeaseBook,
                 subnets: Sequence[Subnet], files: FirstStageFiles, *, sender: ReplySender,
                 in_flight: InFlight, counters: Counters,
                 defaults: dict[str, SettingValue], clock: Callable[[], float]) -> None:
        self.settings = settings
        self.inventory = inventory
        self.leases = leases
        self.subnets = subnets
        self.files = files
        self.defaults = defaults
        self.mode = policy.DhcpMode(settings.mode)
        self._sender = sender
        self._in_flight = in_flight
        self._counters = counters
        self._clock = clock
        self._foreign_log = OncePer(FOREIGN_LOG_EVERY)
        self._mac_log = OncePer(MAC_LOG_EVERY)  # key: (what, MAC)
        #: why this head may not offer new leases (ha/membership.py, through server.py)
        self.fenced: Callable[[], str | None] = lambda: None
        self.discovery = Discovery(settings, inventory, leases, in_flight, counters, clock=clock,
                                   answer=self.discover, record=self.record)

    @property
    def server_ip(self) -> IPv4Address:
        return self._sender.server_ip

    # -- addresses -------------------------------------------------------------------------

    def discover(self, decision: policy.Discover, transport: asyncio.DatagramTransport,
                 node: Node | None = None) -> None:
        packet, mac = decision.packet, decision.mac
        if self.mode is policy.DhcpMode.PROXY:
            node = node or self.inventory.node_by_mac(mac)
            if node is None and self.settings.discovery:
                self.discovery.discover(decision, None, transport)  # answered once stored
                return
            self._seen(node)
            self._proxy_answer(packet, mac, transport, None)
            return
        subnet = subnet_for(self.subnets, packet)
        if subnet is None:
            self._counters["ignored:no_subnet"] += 1
            return
        node = node or self.inventory.node_by_mac(mac)
        if node is None and self.settings.discovery:
            self.discovery.discover(decision, subnet, transport)
            return
        self._seen(node)
        if not self._may_offer(mac, node) or not self._reservation_fits(node, subnet):
            return
        ip = self.leases.offer(mac, subnet.pool, self._clock(), requested=decision.requested_ip,
                               reserved=node.ip if node else None)
        if ip is None:
            self._counters["pool_exhausted"] += 1
            log.warning("dhcp: no free address for %s in %s", mac, subnet.network)
            return
        grant = self._grant(subnet, ip, node)
        boot = self._boot_info(packet, mac, node)
        self._sender.send(packet, offer_reply(packet, self.server_ip, grant, boot), transport)
        if node is not None and self.leases.store_up:
            self.record(mac, "dhcp_offered", {"ip": str(ip), "firmware": str(
                classify_firmware(packet))})

    async def request(self, decision: policy.DhcpRequest,
                      transport: asyncio.DatagramTransport) -> None:
        packet, mac, address = decision.packet, decision.mac, decision.address
        subnet = subnet_for(self.subnets, packet)
        node = self.inventory.node_by_mac(mac)
        self._seen(node)
        verdict = policy.check_request(decision, subnet, node, self.leases.lease_of(mac))
        if verdict == policy.SILENT:
            self._counters["request_silent"] += 1
            return
        if verdict is not None or subnet is None:
            self._nak(packet, verdict or "no subnet", transport)
            return
        if self._from_cache(decision, subnet, node, transport):
            return
        if not self.leases.store_up:
            self._counters["ack_withheld:store_down"] += 1  # nothing may be bound unrecorded
            return
        # The ACK goes out only once the binding is durable (leases.py).
        try:
            lease = await self.leases.bind(mac, address, self._clock(),
                                           self.settings.lease_time,
                                           hostname=node.name if node else None)
        except (StoreUnavailable, TimeoutError) as exc:
            if not self._from_cache(decision, subnet, node, transport):
                self._counters["ack_withheld:store_down"] += 1
                log.warning("dhcp: no ACK for %s (%s): %s", mac, address, exc)
            return
        if lease is None:
            self._nak(packet, "address taken", transport)
            return
        self._ack(decision, subnet, node, self.settings.lease_time, transport)

    def _from_cache(self, decision: policy.DhcpRequest, subnet: Subnet, node: Node | None,
                    transport: asyncio.DatagramTransport) -> bool:
        """ACK the lease the client already holds, unchanged and with no store write, when
        policy.cached_lease_time allows it (see leases.py on the store being down)."""
        s, up = self.settings, self.leases.store_up
        left = policy.cached_lease_time(
            self.leases.lease_of(decision.mac), decision.address, node, self._clock(),
            policy.cache_floor(s.lease_time, s.lease_cache_threshold, store_up=up))
        if left is None:
            return False
        self._counters["lease_cached" if up else "lease_cached:store_down"] += 1
        self._ack(decision, subnet, node, left, transport, cached=True)
        return True

    def _ack(self, decision: policy.DhcpRequest, subnet: Subnet, node: Node | None,
             lease_time: int, transport: asyncio.DatagramTransport, *,
             cached: bool = False) -> None:
        packet, address = decision.packet, decision.address
        grant = self._grant(subnet, address, node, lease_time)
        boot = self._boot_info(packet, decision.mac, node)
        self._sender.send(packet, ack_reply(packet, self.server_ip, grant, boot), transport)
        if node is not None and self.leases.store_up:  # else the event could not be written
            self.record(decision.mac, "dhcp_acked", {"ip": str(address), "cached": cached,
                                                     "state": decision.state.value})

    async def end(self, decision: policy.Decline | policy.Release) -> None:
        quarantine = self.settings.decline_time if isinstance(decision, policy.Decline) else 0
        done = await self.leases.end(decision.mac, decision.address, self._clock(),
                                     quarantine=quarantine)
        kind = "declined" if quarantine else "released"
        self._counters[f"lease_{kind}"] += int(done)
        if quarantine and not done:
            self._counters["decline_ignored"] += 1
        if not quarantine or not self._mac_log.due(("decline", decision.mac), self._clock()):
            return
        if done:
            log.warning("dhcp: %s declined %s (in use?); quarantined for %ds", decision.mac,
                        decision.address, quarantine)
        else:
            log.warning("dhcp: %s declined %s, which is not its lease; ignored (%d ignored so "
                        "far)", decision.mac, decision.address, self._counters["decline_ignored"])

    def inform(self, decision: policy.Inform, transport: asyncio.DatagramTransport) -> None:
        subnet = subnet_for(self.subnets, decision.packet)
        options = subnet.options if subnet else {}
        node = self.inventory.node_by_mac(decision.mac)
        boot = self._boot_info(decision.packet, decision.mac, node)
        reply = inform_reply(decision.packet, self.server_ip, options, boot)
        self._sender.send(decision.packet, reply, transport)

    def _reservation_fits(self, node: Node | None, subnet: Subnet) -> bool:
        """A node reserved an address outside the subnet its request came from (another relay,
        a node moved to another rack) is not offered it: the REQUEST would be NAKed (RFC 2131
        4.3.2: not on the client's network) and the node would loop. Counted, and logged a
        line a minute, naming what to fix."""
        if node is None or node.ip is None or node.ip in subnet.network:
            return True
        self._counters["ignored:reservation_elsewhere"] += 1
        if self._mac_log.due(("elsewhere", node.mac), self._clock()):
            log.warning("dhcp: %s is reserved %s, outside %s where its request came from; not "
                        "offered (set the node's ip in %s, or check its relay)", node.name,
                        node.ip, subnet.network, subnet.network)
        return False

    def _may_offer(self, mac: MacAddress, node: Node | None) -> bool:
        """While the store is down only a client whose recorded lease can be ACKed again as it
        stands gets an offer (of that address, the one choose() gives back): no other offer
        could be followed by an ACK. The same while this head is fenced: another head may
        own this client by now."""
        up = self.leases.store_up
        if up and self.fenced() is None:
            return True
        known = self.leases.lease_of(mac)
        if known is not None and policy.cached_lease_time(
                known, known.ip, node, self._clock(), float(policy.MIN_CACHED_LEASE)):
            return True
        self._counters["offer_withheld:store_down" if not up else "offer_withheld:fenced"] += 1
        return False

    def _seen(self, node: Node | None) -> None:
        if node is not None and node.state is NodeState.DISCOVERED:
            self.discovery.seen(node.mac)  # its discovery_ttl starts again

    def _nak(self, packet: DhcpPacket, message: str,
             transport: asyncio.DatagramTransport) -> None:
        self._sender.send(packet, nak_reply(packet, self.server_ip, message), transport)

    def _grant(self, subnet: Subnet, ip: IPv4Address, node: Node | None,
               lease_time: int | None = None) -> Grant:
        options = subnet.options
        if node is not None:  # RFC 2132 3.14: the node's name, so its OS knows who it is
            options = {**options, Opt.HOST_NAME.value: encode_text(node.name)}
        return Grant(ip, self.settings.lease_time if lease_time is None else lease_time,
                     options)

    # -- boot files: proxy mode and port 4011 ----------------------------------------------

    def boot_server(self, decision: policy.BootServerRequest,
                    transport: asyncio.DatagramTransport, source: tuple[str, int]) -> None:
        origin = (IPv4Address(source[0]), source[1])
        self._proxy_answer(decision.packet, decision.mac, transport, origin)

    def _proxy_answer(self, packet: DhcpPacket, mac: MacAddress,
                      transport: asyncio.DatagramTransport,
                      origin: tuple[IPv4Address, int] | None) -> None:
        node = self.inventory.node_by_mac(mac)
        boot = self._boot_info(packet, mac, node)
        if boot is None:
            self._counters["ignored:no_boot_file"] += 1
            return
        reply = proxy_reply(packet, self.server_ip, boot, classify_firmware(packet))
        self._sender.send(packet, reply, transport, origin)

    def _boot_info(self, packet: DhcpPacket, mac: MacAddress,
                   node: Node | None) -> BootInfo | None:
        override = None
        if node is not None:
            value = self._effective(node).get("bootfile")
            override = str(value) if value else None
        return boot_file(classify_firmware(packet), self.files, server=self.server_ip, mac=mac,
                         arch=client_arch(packet), override=override)

    def _effective(self, node: Node) -> dict[str, SettingValue]:
        return effective_values(node, self.inventory.cached_groups(), self.defaults)

    # -- other servers and events ----------------------------------------------------------

    def foreign(self, decision: policy.ForeignServerReply) -> None:
        if decision.server == self.server_ip:
            return  # our own broadcast, heard on port 68
        self._counters["foreign_server"] += 1
        if not self._foreign_log.due(decision.server, self._clock()):
            return
        mac = decision.packet.mac
        log.warning("dhcp: another DHCP server %s sent %s to %s on this segment", decision.server,
                    decision.message_type.name, mac)
        if mac is not None:
            self.record(mac, "foreign_dhcp_server", {"server": str(decision.server),
                                                     "message": decision.message_type.name})

    def record(self, mac: MacAddress, kind: str, detail: dict[str, object]) -> None:
        """A boot event for the node, written in the background (nothing waits for it)."""
        self._in_flight.spawn(self.inventory.add_event(BootEvent(mac, kind, self._clock(),
                                                                 detail)))
