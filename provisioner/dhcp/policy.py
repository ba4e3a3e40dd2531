"""Pure DHCP decisions: what a packet is, and whether a request may be bound.

Rules of this file: layer 0, pure (no store, no sockets, no clock). One packet in, one decision
out: `classify()` returns a client message or `Ignore(reason)`, never raises. `check_request()`
decides a DHCPREQUEST once the server has looked up what it knows of the client. Each check is
a small function, in the style of pixiecore's dhcp.go. The rest of the core: bootfile.py (which
file boots), replies.py (the answer and where it goes), subnets.py (subnet and address choice).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from provisioner.dhcp.bootfile import is_pxe
from provisioner.dhcp.options import SERVER_TYPES, MessageType
from provisioner.dhcp.packet import BOOTREPLY, DhcpPacket
from provisioner.dhcp.subnets import Subnet
from provisioner.nodes.model import Lease, MacAddress, Node

PXE_PORT: Final = 4011  # PXE spec 2.1 section 2.2.4: boot server discovery
SILENT: Final = "silent"  # check_request: neither ACK nor NAK (RFC 2131 section 4.3.2)
_ZERO: Final = IPv4Address(0)


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ignore:
    """Drop the packet; `reason` is a stable token for the per-reason drop counter."""

    reason: str


@dataclass(frozen=True, slots=True)
class ForeignServerReply:
    """An OFFER/ACK/NAK from another DHCP server on the segment: log, count, record."""

    packet: DhcpPacket
    server: IPv4Address  # its option 54, else siaddr
    message_type: MessageType


@dataclass(frozen=True, slots=True)
class Discover:
    packet: DhcpPacket
    mac: MacAddress
    requested_ip: IPv4Address | None  # option 50: a hint (RFC 2131 section 4.3.1)


class RequestState(enum.StrEnum):
    """RFC 2131 section 4.3.2: the client state a DHCPREQUEST was sent from."""

    SELECTING = "selecting"  # answers our OFFER: option 54 and 50 set, ciaddr zero
    INIT_REBOOT = "init-reboot"  # verifies a remembered lease: 50 set, no 54, ciaddr zero
    RENEWING = "renewing"  # unicast to us: ciaddr set, no 50, no 54
    REBINDING = "rebinding"  # broadcast: ciaddr set, no 50, no 54


@dataclass(frozen=True, slots=True)
class DhcpRequest:
    """A DHCPREQUEST, with the client state it was sent from."""

    packet: DhcpPacket
    mac: MacAddress
    state: RequestState
    address: IPv4Address  # the address the client wants bound


@dataclass(frozen=True, slots=True)
class Decline:
    """The client found `address` in use (RFC 2131 section 4.3.3): quarantine it."""

    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address


@dataclass(frozen=True, slots=True)
class Release:
    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address  # ciaddr (RFC 2131 section 4.3.4)


@dataclass(frozen=True, slots=True)
class Inform:
    """The client has an address and wants parameters only (RFC 2131 section 4.3.5)."""

    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address  # ciaddr


@dataclass(frozen=True, slots=True)
class BootServerRequest:
    """A PXE client asking the boot server on port 4011 (PXE spec 2.1 section 2.2.4)."""

    packet: DhcpPacket
    mac: MacAddress


ClientMessage = Discover | DhcpRequest | Decline | Release | Inform | BootServerRequest
Decision = ClientMessage | ForeignServerReply | Ignore


class DhcpMode(enum.StrEnum):
    """[dhcp] mode: how much of the segment's DHCP this server answers."""

    FULL = "full"  # authoritative: addresses and boot information
    PROXY = "proxy"  # ProxyDHCP beside a site server: boot information only, PXE clients only


@dataclass(frozen=True, slots=True)
class Segment:
    """What classify needs to know about the segment a packet arrived on."""

    server_ids: frozenset[IPv4Address]  # our addresses, as sent in option 54
    relays: frozenset[IPv4Address] = frozenset()  # giaddr values we accept
    mode: DhcpMode = DhcpMode.FULL


# -- classify -------------------------------------------------------------------------------


def classify(
    packet: DhcpPacket, segment: Segment, *, unicast: bool = False, pxe_port: bool = False
) -> Decision:
    """Decide what `packet` is. `unicast`: it was sent to our own address, not broadcast (tells
    RENEWING from REBINDING); `pxe_port`: it arrived on port 4011. Never raises."""
    if packet.op == BOOTREPLY:
        return _server_reply(packet, segment)
    mtype = packet.message_type
    mac = packet.mac
    if not packet.dhcp or mtype is None:
        return Ignore("bootp")
    if mac is None:
        return Ignore("not_ethernet")  # nodes are keyed by MAC
    if packet.giaddr != _ZERO and packet.giaddr not in segment.relays:
        return Ignore("unknown_relay")
    if mtype in SERVER_TYPES:
        return Ignore("server_message")
    if segment.mode is DhcpMode.PROXY and not is_pxe(packet):
        return Ignore("not_pxe")
    if pxe_port:
        return _boot_server(packet, mac, mtype)
    if segment.mode is DhcpMode.PROXY:
        return _proxy(packet, mac, mtype, segment)
    return _full(packet, mac, mtype, segment, unicast)


def _server_reply(packet: DhcpPacket, segment: Segment) -> Decision:
    mtype = packet.message_type
    if mtype is None or mtype not in SERVER_TYPES:
        return Ignore("bootreply")
    server = packet.server_id
    if server is None:
        server = packet.siaddr
    if server in segment.server_ids:
        return Ignore("own_reply")
    return ForeignServerReply(packet, server, mtype)


def _boot_server(packet: DhcpPacket, mac: MacAddress, mtype: MessageType) -> Decision:
    # PXE spec 2.1 section 2.2.4: DHCPREQUEST (or INFORM) with ciaddr set, sent to port 4011.
    if mtype not in (MessageType.REQUEST, MessageType.INFORM):
        return Ignore("pxe_port_type")
    return BootServerRequest(packet, mac)


def _proxy(packet: DhcpPacket, mac: MacAddress, mtype: MessageType, segment: Segment) -> Decision:
    # A ProxyDHCP server answers DISCOVERs, and REQUESTs naming it; the site server owns the rest.
    if mtype is MessageType.DISCOVER:
        return Discover(packet, mac, None)
    if mtype is MessageType.REQUEST and packet.server_id in segment.server_ids:
        return BootServerRequest(packet, mac)
    return Ignore("proxy_mode")


def _full(
    packet: DhcpPacket, mac: MacAddress, mtype: MessageType, segment: Segment, unicast: bool
) -> Decision:
    if mtype is MessageType.DISCOVER:
        return Discover(packet, mac, packet.requested_ip)
    if mtype is MessageType.REQUEST:
        return _request(packet, mac, segment, unicast)
    if mtype is MessageType.DECLINE:
        return _decline(packet, mac, segment)
    if mtype is MessageType.RELEASE:
        return _release(packet, mac, segment)
    if mtype is MessageType.INFORM:
        return _inform(packet, mac)
    return Ignore("unsupported_type")


def _request(packet: DhcpPacket, mac: MacAddress, segment: Segment, unicast: bool) -> Decision:
    """RFC 2131 section 4.3.2: the state is read from options 54, 50 and ciaddr."""
    server_id, requested, ciaddr = packet.server_id, packet.requested_ip, packet.ciaddr
    if server_id is not None:
        if server_id not in segment.server_ids:
            # The client chose another server's offer: ours can be released now.
            return Ignore("selected_other_server")
        address = requested or (ciaddr if ciaddr != _ZERO else None)
        if address is None:
            return Ignore("request_without_address")
        return DhcpRequest(packet, mac, RequestState.SELECTING, address)
    if ciaddr != _ZERO:
        # 50 MUST NOT be set here, but a few clients send it anyway: ciaddr is what counts.
        state = RequestState.RENEWING if unicast else RequestState.REBINDING
        return DhcpRequest(packet, mac, state, ciaddr)
    if requested is not None:
        return DhcpRequest(packet, mac, RequestState.INIT_REBOOT, requested)
    return Ignore("request_without_address")


def _decline(packet: DhcpPacket, mac: MacAddress, segment: Segment) -> Decision:
    # RFC 2131 table 5: a DECLINE MUST carry 50 and 54.
    if _for_other_server(packet, segment):
        return Ignore("other_server")
    if packet.requested_ip is None:
        return Ignore("decline_without_address")
    return Decline(packet, mac, packet.requested_ip)


def _release(packet: DhcpPacket, mac: MacAddress, segment: Segment) -> Decision:
    # RFC 2131 table 5: a RELEASE carries ciaddr and MUST carry 54.
    if _for_other_server(packet, segment):
        return Ignore("other_server")
    if packet.ciaddr == _ZERO:
        return Ignore("release_without_address")
    return Release(packet, mac, packet.ciaddr)


def _inform(packet: DhcpPacket, mac: MacAddress) -> Decision:
    # RFC 2131 section 4.3.5: the reply goes to ciaddr, so an INFORM without it is unanswerable.
    if packet.ciaddr == _ZERO:
        return Ignore("inform_without_address")
    return Inform(packet, mac, packet.ciaddr)


def _for_other_server(packet: DhcpPacket, segment: Segment) -> bool:
    server_id = packet.server_id
    return server_id is not None and server_id not in segment.server_ids


# -- binding a request ----------------------------------------------------------------------


def check_request(
    request: DhcpRequest, subnet: Subnet | None, node: Node | None, known: Lease | None
) -> str | None:
    """None to bind; else the message of a NAK, or SILENT (RFC 2131 section 4.3.2: a server
    with no record of the client must not answer). `node` is the client's node in the
    inventory, `known` the lease we hold for its MAC."""
    address, state = request.address, request.state
    if subnet is None or address not in subnet.network:
        return "wrong network"
    if node is not None and node.ip is not None and address != node.ip:
        return f"{node.name} is reserved {node.ip}"
    if state is RequestState.SELECTING:
        return None
    if known is None and node is None:
        # INIT-REBOOT or REBINDING from a client we have no record of: stay silent so a
        # server that does know it can answer.
        return SILENT
    if known is not None and known.ip != address and (node is None or node.ip is None):
        return f"your address is {known.ip}"
    return None


# -- lease caching --------------------------------------------------------------------------

#: seconds a lease must still have to be given again while the store is down: a client told
#: "a few seconds" would only come back at once
MIN_CACHED_LEASE: Final = 60


def cache_floor(lease_time: int, threshold: float, *, store_up: bool) -> float | None:
    """How many seconds a lease must still have to be given again with no store write (as
    Kea's cache-threshold): more than `threshold` of `lease_time` while the store answers, so a
    boot's PXE ROM, iPXE and OS requests cost one write, not three; while it is down, any
    recorded lease with MIN_CACHED_LEASE left, since nothing new can be recorded. None: the
    cache is off (threshold 0) and the store answers."""
    if not store_up:
        return float(MIN_CACHED_LEASE)
    return threshold * lease_time if threshold > 0 else None


def cached_lease_time(known: Lease | None, address: IPv4Address, node: Node | None,
                      now: float, floor: float | None) -> int | None:
    """The seconds left on `known` when it may be ACKed as it stands: bound to `address`, more
    than `floor` seconds left, and not against the node's reservation. The ACK carries what is
    left of the recorded lease, never more (RFC 2131 section 4.3.2 lets a server answer
    from its record of the binding): nothing is promised that the store has not recorded."""
    if floor is None or known is None or known.state != "bound" or known.ip != address:
        return None
    if node is not None and node.ip is not None and node.ip != address:
        return None
    left = int(known.expires - now)
    return left if left > floor else None
