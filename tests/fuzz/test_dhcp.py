"""Malformed and made-up DHCP datagrams against the real server: random bytes, valid packets
with bytes changed, cut or added, and packets scapy builds from drawn fields. Each is sent from
127.0.0.3 to the server's port 67 and waited for until the server has counted it; the ones
`decode` refuses must be counted as dropped, the rest as received, no bug counted. Then a
relayed DISCOVER for the registered node still gets its OFFER."""

from __future__ import annotations

import contextlib
import socket
import time
from ipaddress import IPv4Address

import pytest
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.packet import Raw

from provisioner.dhcp.packet import BROADCAST_FLAG, DhcpPacket, decode, encode
from provisioner.errors import MalformedPacket
from tests.fuzz.bed import (
    DHCP_PORT,
    FUZZER,
    NODE_IP,
    NODE_MAC,
    RELAY,
    SERVER,
    SIZES,
    FuzzBed,
    mutated,
    run_examples,
)

pytestmark = pytest.mark.netns
WAIT = 10.0
#: datagrams sent before waiting until the server has counted them: 20 of at most 1500
#: bytes stay well within a socket's receive buffer, so the kernel drops none of them
BATCH = 20
OFFER = 2
CHADDR = NODE_MAC.packed
PXE = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00"}


def _packet(message: int, xid: int, chaddr: bytes = CHADDR, *, giaddr: str = "0.0.0.0",
            ciaddr: str = "0.0.0.0", **options: bytes) -> bytes:
    opts = {53: bytes([message]), **PXE, **{int(k[1:]): v for k, v in options.items()}}
    return encode(DhcpPacket(op=1, xid=xid, chaddr=chaddr, flags=BROADCAST_FLAG,
                             giaddr=IPv4Address(giaddr), ciaddr=IPv4Address(ciaddr),
                             options=opts))


SEEDS = [
    _packet(1, 1),
    _packet(1, 2, giaddr=RELAY),
    _packet(3, 3, o54=IPv4Address(SERVER).packed, o50=bytes([10, 77, 0, 20])),
    _packet(3, 4, ciaddr="127.0.0.121"),
    _packet(4, 5, o50=bytes([10, 77, 0, 22])),
    _packet(7, 6, ciaddr="127.0.0.123"),
    _packet(8, 7, ciaddr="127.0.0.124"),
    _packet(1, 8, giaddr=RELAY, o82=b"\x01\x04port\x02\x03sw1"),
]


OPTIONS = st.lists(st.one_of(
    st.tuples(st.just("hostname"), st.binary(max_size=40)),
    st.tuples(st.just("client_id"), st.binary(max_size=40)),
    st.tuples(st.just("vendor_class_id"), st.binary(max_size=60)),
    st.tuples(st.just("requested_addr"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("server_id"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("param_req_list"), st.lists(st.integers(0, 255), max_size=20)),
    st.tuples(st.just("lease_time"), st.integers(0, 2**32 - 1)),
), max_size=6)


@st.composite
def built(draw: st.DrawFn) -> bytes:
    """A packet scapy builds from drawn header fields and options, with trailing bytes."""
    header = BOOTP(op=draw(st.just(1) | st.integers(0, 255)),
                   htype=draw(st.just(1) | st.integers(0, 255)),
                   hlen=draw(st.just(6) | st.integers(0, 255)), hops=draw(st.integers(0, 255)),
                   xid=draw(st.integers(0, 2**32 - 1)), flags=draw(st.integers(0, 0xFFFF)),
                   ciaddr=draw(st.ip_addresses(v=4).map(str)),
                   giaddr=draw(st.sampled_from(["0.0.0.0", RELAY, "127.0.0.1"])),
                   chaddr=draw(st.sampled_from([CHADDR, b""]) | st.binary(max_size=16)))
    options = [("message-type", draw(st.integers(0, 20))), *draw(OPTIONS), "end"]
    return raw(header / DHCP(options=options) / Raw(draw(st.binary(max_size=32))))


DATAGRAMS = st.one_of(st.binary(max_size=1500), mutated(SEEDS, changes=8, tail=64),
                      built())


def _processed(counters: dict[str, int]) -> tuple[int, int]:
    """(dropped as malformed, decoded): every datagram read is one of the two. A decoded one
    is received, or dropped by its MAC's rate limit (mutations often repeat a chaddr)."""
    dropped = sum(v for k, v in counters.items()
                  if k.startswith("dropped:") and k != "dropped:send_backlog")
    decoded = sum(v for k, v in counters.items() if k.startswith("received:"))
    return dropped, decoded + counters.get("rate_limited", 0)


def _malformed(data: bytes) -> bool:
    try:
        decode(data)
    except MalformedPacket:
        return True
    return False


def _wait_for(bed: FuzzBed, dropped: int, received: int) -> None:
    deadline = time.monotonic() + WAIT
    while (now := _processed(bed.counters("dhcp"))) != (dropped, received):
        assert time.monotonic() < deadline, f"counted {now}, sent {(dropped, received)}"
        time.sleep(0.001)


def _good_offer(bed: FuzzBed, xid: int) -> DhcpPacket:
    """A relayed DISCOVER (from RELAY:67, giaddr RELAY): the OFFER comes back there. It is
    sent again each second, as a client retransmits (RFC 2131 section 4.1): the fuzzing sent
    many datagrams with the node's own chaddr, so its MAC's rate limit may drop the first
    tries until its bucket refills (limits.py, mac_rate)."""
    def exchange() -> DhcpPacket:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
            relay.bind((RELAY, DHCP_PORT))
            relay.settimeout(1.0)
            deadline = time.monotonic() + 3 * WAIT
            while time.monotonic() < deadline:
                relay.sendto(_packet(1, xid, giaddr=RELAY), (SERVER, DHCP_PORT))
                with contextlib.suppress(TimeoutError):
                    while (reply := decode(relay.recv(70000))).xid != xid:
                        pass
                    return reply
            raise AssertionError("no OFFER for the good DISCOVER")
    return bed.inside(exchange)


@pytest.mark.parametrize("count", SIZES)
def test_malformed_datagrams_are_dropped_and_counted_and_a_discover_still_gets_its_offer(
        bed: FuzzBed, count: int) -> None:
    before = _processed(bed.counters("dhcp"))
    errors_before = bed.counters("dhcp").get("errors", 0)
    sent = {"malformed": 0, "decoded": 0}
    sender = bed.inside(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    bed.inside(lambda: sender.bind((FUZZER, 0)))

    def check(data: bytes) -> None:
        sent["malformed" if _malformed(data) else "decoded"] += 1
        sender.sendto(data, (SERVER, DHCP_PORT))
        if sum(sent.values()) % BATCH == 0:
            _wait_for(bed, before[0] + sent["malformed"], before[1] + sent["decoded"])

    try:
        run_examples(bed, DATAGRAMS, check, count)
    finally:
        sender.close()
    _wait_for(bed, before[0] + sent["malformed"], before[1] + sent["decoded"])
    assert sent["malformed"] > count // 10 and sent["decoded"] > count // 10, sent
    assert bed.counters("dhcp").get("errors", 0) == errors_before  # malformed is not a bug
    offer = _good_offer(bed, 0x600D)
    assert offer.message_type == OFFER and offer.chaddr[:6] == CHADDR
    assert offer.yiaddr == IPv4Address(NODE_IP)  # its reservation
    bed.healthy()
