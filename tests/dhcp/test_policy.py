"""Pure decisions: classify (RFC 2131 section 4.3) and check_request (RFC 2131 section 4.3.2).
The helpers here build the packets the other pure-core tests use too."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from provisioner.dhcp import policy as p
from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import DhcpPacket, decode
from provisioner.dhcp.subnets import Pool, Subnet
from provisioner.nodes.model import Lease, MacAddress, Node
from tests.dhcp.test_vectors import (
    MAC,
    OVMF_X64,
    UDHCPC,
    Option,
    client_wire,
    wire,
)

SERVER = IPv4Address("10.0.0.1")
OTHER = IPv4Address("10.0.0.254")
RELAY = IPv4Address("10.2.0.1")
NODE_MAC = MacAddress.from_bytes(MAC)
SEGMENT = p.Segment(server_ids=frozenset({SERVER}), relays=frozenset({RELAY}))
PROXY = p.Segment(server_ids=frozenset({SERVER}), mode=p.DhcpMode.PROXY)
AGENT = b"\x01\x06eth0/7\x02\x06" + MAC


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def packet(mtype: int, *extra: Option, **fields: object) -> DhcpPacket:
    return decode(wire([(53, bytes((mtype,))), *extra], **fields))  # type: ignore[arg-type]


def sid(address: IPv4Address = SERVER) -> Option:
    return (54, address.packed)


def req(address: str) -> Option:
    return (50, ip(address).packed)


# -- classify -------------------------------------------------------------------------------


REQUEST_TABLE: list[tuple[DhcpPacket, bool, p.RequestState, str]] = [
    (packet(3, sid(), req("10.0.0.5")), False, p.RequestState.SELECTING, "10.0.0.5"),
    (packet(3, req("10.0.0.6")), False, p.RequestState.INIT_REBOOT, "10.0.0.6"),
    (packet(3, ciaddr="10.0.0.7"), True, p.RequestState.RENEWING, "10.0.0.7"),
    (packet(3, ciaddr="10.0.0.7"), False, p.RequestState.REBINDING, "10.0.0.7"),
    # 50 MUST NOT be sent with ciaddr, but is by some clients: ciaddr wins.
    (packet(3, req("10.0.0.9"), ciaddr="10.0.0.8"), True, p.RequestState.RENEWING, "10.0.0.8"),
]


@pytest.mark.parametrize(("pkt", "unicast", "state", "address"), REQUEST_TABLE)
def test_request_states(
    pkt: DhcpPacket, unicast: bool, state: p.RequestState, address: str
) -> None:
    decision = p.classify(pkt, SEGMENT, unicast=unicast)
    assert decision == p.DhcpRequest(pkt, NODE_MAC, state, ip(address))


IGNORE_TABLE: list[tuple[DhcpPacket, p.Segment, str]] = [
    (packet(3, sid(OTHER), req("10.0.0.5")), SEGMENT, "selected_other_server"),
    (packet(3, sid()), SEGMENT, "request_without_address"),
    (packet(3), SEGMENT, "request_without_address"),
    (packet(1, giaddr="10.9.9.9"), SEGMENT, "unknown_relay"),
    (packet(2), SEGMENT, "server_message"),  # OFFER from a client port
    (packet(5), SEGMENT, "server_message"),
    (packet(6), SEGMENT, "server_message"),
    (packet(4, sid(OTHER), req("10.0.0.5")), SEGMENT, "other_server"),
    (packet(4, sid()), SEGMENT, "decline_without_address"),
    (packet(7, sid(OTHER), ciaddr="10.0.0.5"), SEGMENT, "other_server"),
    (packet(7, sid()), SEGMENT, "release_without_address"),
    (packet(8), SEGMENT, "inform_without_address"),
    (packet(10), SEGMENT, "unsupported_type"),  # LEASEQUERY
    (decode(wire([], cookie=b"\0\0\0\0", end=False)), SEGMENT, "bootp"),
    (packet(1, htype=6), SEGMENT, "not_ethernet"),
    (packet(1, op=2), SEGMENT, "bootreply"),
    (packet(2, sid(), op=2), SEGMENT, "own_reply"),
    (packet(1), PROXY, "not_pxe"),
    (decode(wire(UDHCPC)), PROXY, "not_pxe"),
]


@pytest.mark.parametrize(("pkt", "segment", "reason"), IGNORE_TABLE)
def test_ignored(pkt: DhcpPacket, segment: p.Segment, reason: str) -> None:
    assert p.classify(pkt, segment) == p.Ignore(reason)


def test_discover_decline_release_inform() -> None:
    discover = packet(1, req("10.0.0.23"))
    assert p.classify(discover, SEGMENT) == p.Discover(discover, NODE_MAC, ip("10.0.0.23"))
    decline = packet(4, sid(), req("10.0.0.5"))
    assert p.classify(decline, SEGMENT) == p.Decline(decline, NODE_MAC, ip("10.0.0.5"))
    release = packet(7, sid(), ciaddr="10.0.0.5")
    assert p.classify(release, SEGMENT) == p.Release(release, NODE_MAC, ip("10.0.0.5"))
    inform = packet(8, ciaddr="10.0.0.5")
    assert p.classify(inform, SEGMENT) == p.Inform(inform, NODE_MAC, ip("10.0.0.5"))


def test_relayed_request_from_a_known_relay_is_served() -> None:
    discover = packet(1, giaddr=str(RELAY))
    assert isinstance(p.classify(discover, SEGMENT), p.Discover)


@pytest.mark.parametrize("mtype", [MessageType.OFFER, MessageType.ACK, MessageType.NAK])
def test_foreign_server_reply(mtype: MessageType) -> None:
    reply = packet(mtype, sid(OTHER), op=2)
    assert p.classify(reply, SEGMENT) == p.ForeignServerReply(reply, OTHER, mtype)
    without_54 = packet(mtype, op=2, siaddr="10.0.0.99")
    decision = p.classify(without_54, SEGMENT)
    assert isinstance(decision, p.ForeignServerReply)
    assert decision.server == ip("10.0.0.99")


def test_proxy_mode() -> None:
    discover = decode(client_wire("ovmf-x64"))
    assert p.classify(discover, PROXY) == p.Discover(discover, NODE_MAC, None)
    to_us = decode(wire([*OVMF_X64[1:], (53, b"\x03"), sid(), req("192.168.1.50")]))
    assert p.classify(to_us, PROXY) == p.BootServerRequest(to_us, NODE_MAC)
    to_site = decode(wire([*OVMF_X64[1:], (53, b"\x03"), sid(OTHER), req("192.168.1.50")]))
    assert p.classify(to_site, PROXY) == p.Ignore("proxy_mode")


def test_pxe_port_4011() -> None:
    boot = decode(wire([*OVMF_X64[1:], (53, b"\x03")], ciaddr="192.168.1.50"))
    assert p.classify(boot, PROXY, pxe_port=True) == p.BootServerRequest(boot, NODE_MAC)
    assert p.classify(boot, SEGMENT, pxe_port=True) == p.BootServerRequest(boot, NODE_MAC)
    discover = decode(client_wire("ovmf-x64"))
    assert p.classify(discover, PROXY, pxe_port=True) == p.Ignore("pxe_port_type")


# -- check_request --------------------------------------------------------------------------

NETWORK_SUBNET = Subnet(IPv4Network("10.0.0.0/24"), Pool(ip("10.0.0.10"), ip("10.0.0.99")),
                        None, {})
KNOWN_NODE = Node(NODE_MAC, "node007")
RESERVED_NODE = Node(NODE_MAC, "node008", ip=ip("10.0.0.50"))


def _lease(address: str) -> Lease:
    return Lease(ip(address), NODE_MAC, 1e9)


def _request(state: p.RequestState, address: str) -> p.DhcpRequest:
    return p.DhcpRequest(packet(3), NODE_MAC, state, ip(address))


SELECTING, INIT_REBOOT = p.RequestState.SELECTING, p.RequestState.INIT_REBOOT
CHECK_TABLE: list[tuple[p.DhcpRequest, Subnet | None, Node | None, Lease | None, str | None]] = [
    (_request(SELECTING, "10.0.0.20"), NETWORK_SUBNET, None, None, None),
    (_request(SELECTING, "10.9.0.20"), NETWORK_SUBNET, None, None, "wrong network"),
    (_request(SELECTING, "10.0.0.20"), None, None, None, "wrong network"),
    (_request(SELECTING, "10.0.0.20"), NETWORK_SUBNET, RESERVED_NODE, None,
     "node008 is reserved 10.0.0.50"),
    (_request(SELECTING, "10.0.0.50"), NETWORK_SUBNET, RESERVED_NODE, None, None),
    # Not SELECTING: what we know of the client decides.
    (_request(INIT_REBOOT, "10.0.0.20"), NETWORK_SUBNET, None, None, p.SILENT),
    (_request(INIT_REBOOT, "10.0.0.20"), NETWORK_SUBNET, KNOWN_NODE, None, None),
    (_request(INIT_REBOOT, "10.0.0.20"), NETWORK_SUBNET, None, _lease("10.0.0.20"), None),
    (_request(INIT_REBOOT, "10.0.0.20"), NETWORK_SUBNET, None, _lease("10.0.0.21"),
     "your address is 10.0.0.21"),
    (_request(p.RequestState.RENEWING, "10.0.0.50"), NETWORK_SUBNET, RESERVED_NODE,
     _lease("10.0.0.21"), None),  # the reservation wins over an older lease
]


@pytest.mark.parametrize(("request_", "subnet", "node", "known", "verdict"), CHECK_TABLE)
def test_check_request(request_: p.DhcpRequest, subnet: Subnet | None, node: Node | None,
                       known: Lease | None, verdict: str | None) -> None:
    assert p.check_request(request_, subnet, node, known) == verdict
