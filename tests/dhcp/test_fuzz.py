"""Property tests (issue 3, "Bad input"): any datagram either decodes or raises MalformedPacket,
and whatever decodes gets a decision from the policy, never an exception. Built packets
round-trip. Example counts stay modest: the CI machine has two shared cores."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.dhcp import policy as p
from provisioner.dhcp.bootfile import FirstStageFiles, boot_file, classify_firmware, client_arch
from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import DhcpPacket, decode, encode
from provisioner.dhcp.replies import (
    Grant,
    ack_reply,
    inform_reply,
    nak_reply,
    offer_reply,
    proxy_reply,
    reply_destination,
)
from provisioner.dhcp.subnets import pick_address
from provisioner.errors import MalformedPacket
from provisioner.nodes.model import MacAddress
from tests.dhcp.test_vectors import CLIENTS, client_wire, wire

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERVER = IPv4Address("10.0.0.1")
SEGMENTS = [
    p.Segment(frozenset({SERVER}), frozenset({IPv4Address("10.2.0.1")})),
    p.Segment(frozenset({SERVER}), mode=p.DhcpMode.PROXY),
]
GRANT = Grant(IPv4Address("10.0.0.5"), 3600, {1: bytes([255, 255, 255, 0]), 3: SERVER.packed})
SEEDS = [client_wire(name) for name in sorted(CLIENTS)] + [
    wire([(53, b"\x03"), (54, SERVER.packed), (50, bytes([10, 0, 0, 5])), (82, b"\x01\x01a")]),
    wire([(53, b"\x01"), (52, b"\x03")], file=bytes([12, 2]) + b"ab\xff"),
    wire([(53, b"\x02"), (54, bytes([10, 0, 0, 9]))], op=2),
]


def decide(data: bytes) -> None:
    """The server's whole pure path: decode, classify, and build and place any reply."""
    try:
        packet = decode(data)
    except MalformedPacket as error:
        assert error.reason
        return
    for segment in SEGMENTS:
        for unicast in (False, True):
            decision = p.classify(packet, segment, unicast=unicast)
            answer(decision)
        answer(p.classify(packet, segment, pxe_port=True))


def answer(decision: p.Decision) -> None:
    if isinstance(decision, p.Ignore | p.ForeignServerReply):
        return
    request = decision.packet
    firmware = classify_firmware(request)
    boot = boot_file(
        firmware, FirstStageFiles(), server=SERVER, mac=decision.mac, arch=client_arch(request)
    )
    replies = [offer_reply(request, SERVER, GRANT, boot), nak_reply(request, SERVER)]
    replies.append(ack_reply(request, SERVER, GRANT, boot))
    replies.append(inform_reply(request, SERVER, GRANT.options, boot))
    if boot is not None:
        replies.append(proxy_reply(request, SERVER, boot, firmware))
    for reply in replies:
        assert decode(encode(reply)).xid == request.xid
        reply_destination(request, reply)


@FUZZ
@given(st.binary(max_size=700))
def test_random_bytes(data: bytes) -> None:
    decide(data)


@FUZZ
@given(st.binary(min_size=240, max_size=600))
def test_random_bytes_behind_a_valid_header_and_cookie(data: bytes) -> None:
    decide(SEEDS[0][:236] + b"\x63\x82\x53\x63" + data[240:])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real packet with a few byte flips anywhere and cuts, inserts or deletes in the
    options area (edits of the fixed header would mostly just give "short_header")."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "flip", "cut", "insert", "delete"]))
        low = 0 if action == "flip" else min(240, len(data))
        at = draw(st.integers(low, max(low, len(data) - 1)))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_packets(data: bytes) -> None:
    decide(data)


# Options whose content decode checks are left out: the generator makes arbitrary bytes.
_FREE_CODES = st.integers(1, 254).filter(lambda c: c not in {50, 51, 52, 53, 54, 57, 82})


@st.composite
def packets(draw: st.DrawFn) -> DhcpPacket:
    options = {53: bytes((draw(st.sampled_from(list(MessageType))),))}
    options.update(draw(st.dictionaries(_FREE_CODES, st.binary(max_size=600), max_size=8)))
    address = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
    nul_free = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"x"))
    return DhcpPacket(
        op=draw(st.sampled_from([1, 2])),
        xid=draw(st.integers(0, 2**32 - 1)),
        chaddr=draw(st.binary(min_size=16, max_size=16)),
        hlen=draw(st.integers(0, 16)),
        flags=draw(st.integers(0, 0xFFFF)),
        ciaddr=draw(address),
        giaddr=draw(address),
        sname=draw(nul_free),
        file=draw(nul_free),
        options=options,
    )


@FUZZ
@given(packets())
def test_round_trip(packet: DhcpPacket) -> None:
    assert decode(encode(packet)) == packet


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 15)), st.binary(min_size=6, max_size=6))
def test_pick_address_never_returns_a_taken_one(taken_offsets: set[int], mac: bytes) -> None:
    first = IPv4Address("10.0.0.0")
    taken = {first + i for i in taken_offsets}
    chosen = pick_address(first, first + 15, taken, mac=MacAddress.from_bytes(mac))
    if len(taken) == 16:
        assert chosen is None
    else:
        assert chosen is not None
        assert chosen not in taken
        assert first <= chosen <= first + 15
