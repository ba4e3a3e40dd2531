"""The TFTP codec: RFC byte vectors, every refusal reason, round trips, and a decode fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import LocalProtocolError, MalformedPacket
from provisioner.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Mode,
    Opcode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
)

# RFC 2347 section "Example": RRQ with blksize; iPXE's request shape (tsize 0, blksize 1432).
RFC2347_RRQ = b"\x00\x01foobar\x00octet\x00blksize\x001428\x00"
IPXE_RRQ = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00"


def test_rfc_2347_request() -> None:
    assert decode(RFC2347_RRQ) == ReadRequest("foobar", Mode.OCTET, (("blksize", "1428"),))


def test_ipxe_request() -> None:
    packet = decode(IPXE_RRQ)
    assert isinstance(packet, ReadRequest)
    assert packet.filename == "undionly.kpxe"
    assert packet.option("TSIZE") == "0"
    assert packet.option("windowsize") is None


def test_option_names_and_mode_are_case_insensitive() -> None:
    packet = decode(b"\x00\x01f\x00NetASCII\x00BlkSize\x00512\x00")
    assert packet == ReadRequest("f", Mode.NETASCII, (("blksize", "512"),))


def test_trailing_nul_padding_is_tolerated() -> None:
    assert decode(b"\x00\x01f\x00octet\x00\x00\x00\x00") == ReadRequest("f")
    assert decode(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00") == ReadRequest(
        "f", options=(("tsize", "0"),)
    )


def test_non_latin_option_is_read_not_refused() -> None:
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x00\xef\xbc\x91\x00")
    assert isinstance(packet, ReadRequest)
    assert packet.option("blksize") == "\xef\xbc\x91"


def test_write_request() -> None:
    assert decode(b"\x00\x02up.bin\x00octet\x00") == WriteRequest("up.bin")


def test_data_ack_error_oack() -> None:
    assert decode(b"\x00\x03\x00\x01hello") == Data(1, b"hello")
    assert decode(b"\x00\x03\xff\xff") == Data(65535, b"")
    assert decode(b"\x00\x04\x00\x00") == Ack(0)
    assert decode(b"\x00\x04\x01\x02\x00\x00") == Ack(258)  # padded ACK: first 4 bytes count
    assert decode(b"\x00\x05\x00\x01File not found\x00") == Error(1, "File not found")
    assert decode(b"\x00\x05\x00\x08") == Error(8, "")  # no message, no NUL
    assert decode(b"\x00\x05\x00\x00caf\xe9\x00") == Error(0, "caf\ufffd")
    assert decode(b"\x00\x06blksize\x001428\x00") == OptionAck((("blksize", "1428"),))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (b"\x00", "short"),
        (b"\x00\x04\x00", "short"),
        (b"\x00\x03\x00", "short"),
        (b"\x00\x05\x00", "short"),
        (b"\x00\x00", "opcode"),
        (b"\x00\x07abc", "opcode"),
        (b"\xff\xff\x00\x00", "opcode"),
        (b"\x00\x01file", "no_nul"),
        (b"\x00\x01file\x00octet", "no_nul"),
        (b"\x00\x01file\x00", "no_nul"),
        (b"\x00\x01caf\xc3\xa9\x00octet\x00", "not_ascii"),
        (b"\x00\x01\xff\x00octet\x00", "not_ascii"),
        (b"\x00\x01file\x00binary\x00", "bad_mode"),
        (b"\x00\x01file\x00mail\x00", "bad_mode"),
        (b"\x00\x01file\x00\x00", "bad_mode"),
        (b"\x00\x01file\x00octet\x00blksize\x00", "odd_options"),
        (b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x00512\x00", "duplicate_option"),
        (b"\x00\x01f\x00octet\x00\x00512\x00", "empty_option"),
        (b"\x00\x06blksize", "no_nul"),
        (b"\x00\x06blksize\x00", "odd_options"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as caught:
        decode(data)
    assert caught.value.reason == reason
    assert caught.value.message


def test_encoders_match_the_wire_format() -> None:
    assert encode_data(1, b"ab") == b"\x00\x03\x00\x01ab"
    assert encode_ack(65535) == b"\x00\x04\xff\xff"
    assert encode_error(ErrorCode.UNKNOWN_TID, "who?") == b"\x00\x05\x00\x05who?\x00"
    assert encode_error(0, "bad\0name \u00e9") == b"\x00\x05\x00\x00bad name ?\x00"
    assert encode_oack((("tsize", "42"),)) == b"\x00\x06tsize\x0042\x00"
    assert encode_request(Opcode.RRQ, "foobar", Mode.OCTET, (("blksize", "1428"),)) == (RFC2347_RRQ)


@pytest.mark.parametrize(
    "packet",
    [
        Data(65536, b""),
        Ack(-1),
        Error(70000, "x"),
        ReadRequest("caf\u00e9"),
        ReadRequest("a\0b"),
        OptionAck((("blksize", "\u2603"),)),
    ],
)
def test_encode_refuses_impossible_packets(packet: Packet) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet)


_text = st.text(st.characters(min_codepoint=1, max_codepoint=0xFF), max_size=20)
_ascii = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=40)
_names = st.lists(
    st.text(st.characters(min_codepoint=1, max_codepoint=0xFF), min_size=1, max_size=10).map(
        str.lower
    ),
    unique_by=str.lower,
    max_size=4,
)


@st.composite
def _options(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    # Names as decode produces them: lower-cased, and unique once lower-cased.
    names = [name for name in draw(_names) if name.lower() == name]
    return tuple((name, draw(_text)) for name in names)


_packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(ReadRequest, _ascii, st.sampled_from(Mode), _options()),
    st.builds(WriteRequest, _ascii, st.sampled_from(Mode), _options()),
    st.builds(Data, st.integers(0, 65535), st.binary(max_size=64)),
    st.builds(Ack, st.integers(0, 65535)),
    st.builds(
        Error, st.integers(0, 65535), st.text(st.characters(min_codepoint=1, max_codepoint=0x7F))
    ),
    st.builds(OptionAck, _options()),
)


@settings(max_examples=300)
@given(_packets)
def test_round_trip(packet: Packet) -> None:
    assert decode(encode(packet)) == packet


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_decode_fuzz_returns_a_packet_or_raises_malformed(data: bytes) -> None:
    try:
        packet = decode(data)
    except MalformedPacket as exc:
        assert exc.reason
    else:
        assert isinstance(packet, ReadRequest | WriteRequest | Data | Ack | Error | OptionAck)


@settings(max_examples=300)
@given(
    st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x05", b"\x00\x06"]),
    st.lists(
        st.sampled_from(
            [b"\x00", b"octet", b"netascii", b"blksize", b"1468", b"\xff", b"tsize", b"0", b"x"]
        ),
        max_size=12,
    ),
)
def test_decode_fuzz_near_valid_requests(opcode: bytes, parts: list[bytes]) -> None:
    """Either a packet of one of the documented kinds, or MalformedPacket with a reason token."""
    try:
        packet = decode(opcode + b"".join(parts))
    except MalformedPacket as error:
        assert error.reason
        return
    assert isinstance(packet, ReadRequest | WriteRequest | Data | Ack | Error | OptionAck)
