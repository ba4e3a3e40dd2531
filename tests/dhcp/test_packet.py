"""The codec: round trips, RFC 3396 long options, option 52 overload, BOOTP, and every
malformed input of issue 3's "Bad input" list, each refused with its reason token."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import (
    MAX_UDP_PAYLOAD,
    MIN_PACKET,
    DhcpPacket,
    decode,
    encode,
    encoded_option_size,
)
from provisioner.errors import LocalProtocolError, MalformedPacket
from provisioner.nodes.model import MacAddress
from tests.dhcp.test_vectors import CLIENTS, DHCLIENT, MAC, UDHCPC, client_wire, wire

CHADDR = MAC + bytes(10)


def offer(**changes: object) -> DhcpPacket:
    base = DhcpPacket(
        op=2,
        xid=0xDEADBEEF,
        chaddr=CHADDR,
        flags=0x8000,
        yiaddr=IPv4Address("10.0.0.5"),
        siaddr=IPv4Address("10.0.0.1"),
        giaddr=IPv4Address("10.1.0.1"),
        sname=b"head",
        file=b"undionly.kpxe",
        options={53: b"\x02", 54: bytes([10, 0, 0, 1]), 51: bytes([0, 0, 14, 16]), 250: b"x"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def reasons(data: bytes) -> str:
    with pytest.raises(MalformedPacket) as caught:
        decode(data)
    return caught.value.reason


# -- round trips ----------------------------------------------------------------------------


def test_round_trip_keeps_every_field_and_unknown_options() -> None:
    packet = offer()
    assert decode(encode(packet)) == packet


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_client_vectors_round_trip(name: str) -> None:
    packet = decode(client_wire(name))
    assert decode(encode(packet)) == packet
    assert encode(packet) == client_wire(name)  # same bytes: same order, end, 300 padding


def test_decode_equals_the_constructed_value() -> None:
    """decode builds the frozen dataclass without its __init__: it must be the same value."""
    decoded = decode(encode(offer()))
    assert decoded == offer()
    assert repr(decoded) == repr(offer())
    assert hash(decoded) == hash(offer())
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.xid = 1  # type: ignore[misc]


def test_encode_pads_to_the_bootp_minimum_and_ends_with_255() -> None:
    data = encode(offer(options={53: b"\x02"}))
    assert len(data) == MIN_PACKET
    assert data[236:240] == b"\x63\x82\x53\x63"
    assert data[240:244] == b"\x35\x01\x02\xff"


def test_encode_rejects_what_cannot_be_sent() -> None:
    with pytest.raises(LocalProtocolError):
        encode(offer(file=b"x" * 129))
    with pytest.raises(LocalProtocolError):
        encode(offer(options={255: b"x"}))
    with pytest.raises(LocalProtocolError):
        encode(offer(options={0: b""}))


def test_flags_and_addresses() -> None:
    packet = decode(client_wire("udhcpc", ciaddr="10.0.0.9", giaddr="10.2.0.1"))
    assert packet.ciaddr == IPv4Address("10.0.0.9")
    assert packet.giaddr == IPv4Address("10.2.0.1")
    assert not packet.broadcast
    assert decode(client_wire("ovmf-x64")).broadcast


def test_mac_needs_ethernet() -> None:
    assert decode(wire(UDHCPC, htype=6)).mac is None  # IEEE 802 token ring
    assert decode(wire(UDHCPC, hlen=8, chaddr=bytes(8))).mac is None


# -- RFC 3396 long options --------------------------------------------------------------------


def test_long_option_is_split_and_concatenated_back() -> None:
    value = bytes(range(256)) * 3  # 768 bytes: 255 + 255 + 255 + 3
    data = encode(offer(options={53: b"\x02", 43: value}))
    assert data[243:245] == b"\x2b\xff"  # first fragment: code 43, 255 bytes
    assert data.count(b"\x2b\x03") >= 1
    assert decode(data).options[43] == value
    assert encoded_option_size(value) == 768 + 8


def test_repeated_option_on_the_wire_is_concatenated_in_order() -> None:
    data = wire([(53, b"\x01"), (77, b"ab"), (12, b"node"), (77, b"cd")])
    packet = decode(data)
    assert packet.options[77] == b"abcd"
    assert list(packet.options) == [53, 77, 12]


def test_empty_option_encodes_as_zero_length() -> None:
    data = encode(offer(options={53: b"\x02", 80: b""}))
    assert decode(data).options[80] == b""


# -- option 52 overload -----------------------------------------------------------------------


def test_overload_file_and_sname_are_read_after_options() -> None:
    file = bytes([67, 5]) + b"a.efi" + bytes([77, 2]) + b"cd" + b"\xff"
    sname = bytes([12, 4]) + b"node" + bytes([77, 2]) + b"ef" + b"\xff"
    data = wire([(53, b"\x01"), (52, b"\x03"), (77, b"ab")], file=file, sname=sname)
    packet = decode(data)
    assert packet.options[67] == b"a.efi"
    assert packet.options[12] == b"node"
    assert packet.options[77] == b"abcdef"  # options, then file, then sname (RFC 3396 s5)
    assert 52 not in packet.options
    assert packet.file == b""
    assert packet.sname == b""


def test_overload_file_only_keeps_sname() -> None:
    data = wire([(53, b"\x01"), (52, b"\x01")], file=bytes([53, 1, 1]), sname=b"server")
    assert reasons(data) == "duplicate_53"
    data = wire([(53, b"\x01"), (52, b"\x01")], file=bytes([66, 1]) + b"x", sname=b"server")
    packet = decode(data)
    assert packet.options[66] == b"x"
    assert packet.sname == b"server"


def test_overload_value_must_be_1_2_or_3() -> None:
    assert reasons(wire([(53, b"\x01"), (52, b"\x04")])) == "bad_option52"
    assert reasons(wire([(53, b"\x01"), (52, b"")])) == "bad_option52"


def test_overrun_inside_an_overloaded_field() -> None:
    data = wire([(53, b"\x01"), (52, b"\x01")], file=bytes(126) + bytes([12, 9]))
    assert reasons(data) == "option_overrun"


# -- BOOTP, pad, end ------------------------------------------------------------------------


def test_bootp_without_cookie_decodes_with_no_options() -> None:
    packet = decode(wire([], cookie=b"\0\0\0\0", end=False, file=b"boot.img"))
    assert packet.dhcp is False
    assert packet.options == {}
    assert packet.message_type is None
    assert packet.file == b"boot.img"
    assert len(encode(packet)) == MIN_PACKET
    assert decode(encode(packet)) == packet


def test_header_only_datagram_is_bootp() -> None:
    assert decode(wire([], cookie=b"", end=False, pad_to=236)).dhcp is False


def test_pad_options_are_skipped_and_missing_end_is_tolerated() -> None:
    data = wire([(53, b"\x01")], end=False, pad_to=0) + b"\0\0\0" + bytes([12, 1]) + b"n"
    packet = decode(data)
    assert packet.options == {53: b"\x01", 12: b"n"}


def test_bytes_after_end_are_ignored() -> None:
    data = wire([(53, b"\x01")], pad_to=0) + bytes([12, 200])  # would overrun if read
    assert decode(data).options == {53: b"\x01"}


# -- the "Bad input" list -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short_header"),  # zero-length packet
        (client_wire("udhcpc")[:235], "short_header"),  # shorter than the 236-byte header
        (client_wire("udhcpc").ljust(65536, b"\0"), "too_long"),  # 64 KiB
        (wire([(53, b"\x01"), (12, b"abc")], pad_to=0)[:-3], "option_overrun"),  # past the end
        (wire([(53, b"\x01")], end=False, pad_to=0) + b"\x0c", "option_overrun"),  # no length
        (wire([(12, b"node")]), "missing_53"),
        (wire([(53, b"\x01\x01")]), "bad_53"),  # wrong length
        (wire([(53, b"")]), "bad_53"),
        (wire([(53, b"\x00")]), "bad_53"),  # not a message type
        (wire([(53, b"\x63")]), "bad_53"),
        (wire([(53, b"\x01"), (53, b"\x03")]), "duplicate_53"),
        (wire([(53, b"\x03"), (54, b"\x0a\0\0\x01"), (54, b"\x0a\0\0\x02")]), "duplicate_54"),
        (wire(UDHCPC, hlen=17), "hlen"),  # hlen over 16
        (wire(UDHCPC, op=3), "bad_op"),
        (wire([(53, b"\x01"), (82, b"\x01\x05ab")]), "bad_option82"),  # garbage option 82
        (wire([(53, b"\x01"), (82, b"")]), "bad_option82"),
        (wire([(53, b"\x01"), (82, b"\x01\x00")]), "bad_option82"),  # empty circuit-id
        (wire([(53, b"\x03"), (54, b"\x0a\0\0")]), "bad_option54"),
        (wire([(53, b"\x03"), (50, b"\x0a\0\0\x01\x02")]), "bad_option50"),
        (wire([(53, b"\x01"), (57, b"\x05")]), "bad_option57"),
        (wire([(53, b"\x01"), (51, b"\0\0\x0e")]), "bad_option51"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    assert reasons(data) == reason


def test_configured_size_cap() -> None:
    data = client_wire("udhcpc", pad_to=1500)
    assert decode(data).message_type is MessageType.DISCOVER
    with pytest.raises(MalformedPacket) as caught:
        decode(data, max_size=1024)
    assert caught.value.reason == "too_long"


def test_largest_udp_payload_still_decodes() -> None:
    assert decode(wire(DHCLIENT, pad_to=MAX_UDP_PAYLOAD)).requested_ip is not None


def test_mac_is_the_canonical_model_value() -> None:
    """packet.mac skips MacAddress's text validation: it must still equal a validated one."""
    mac = decode(wire(UDHCPC, chaddr=bytes.fromhex("AABBCC0D0E0F"))).mac
    assert mac == MacAddress("AA-BB-CC-0D-0E-0F")
    assert mac is not None
    assert hash(mac) == hash(MacAddress("aabbcc0d0e0f"))
    assert mac.packed == bytes.fromhex("aabbcc0d0e0f")
