"""RFC 2347 option negotiation and the server-side screening of requests on port 69."""

from __future__ import annotations

import pytest

from provisioner.tftp.negotiation import Negotiated, SessionConfig, negotiate
from provisioner.tftp.packet import (
    Error,
    ErrorCode,
    Mode,
    Opcode,
    ReadRequest,
    decode,
    encode_ack,
    encode_data,
    encode_oack,
    encode_request,
)
from provisioner.tftp.screening import (
    UNKNOWN_TID,
    Accepted,
    Rejected,
    error_datagram,
    screen_request,
)
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import State


class Source:
    def __init__(self, data: bytes, size: int | None = -1) -> None:
        self.data = data
        self.size = len(data) if size == -1 else size

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


CONFIG = SessionConfig()


def oack_of(
    *options: tuple[str, str],
    size: int | None = 1000,
    config: SessionConfig = CONFIG,
    mode: Mode = Mode.OCTET,
) -> tuple[tuple[str, str], ...]:
    return negotiate(ReadRequest("f", mode, options), size, config).oack


@pytest.mark.parametrize(
    ("options", "oack"),
    [
        ((("blksize", "1428"),), (("blksize", "1428"),)),  # RFC 2347 example
        ((("blksize", "8"),), (("blksize", "8"),)),
        ((("blksize", "7"),), ()),  # out of range: left out
        ((("blksize", "65465"),), ()),
        ((("blksize", "0"),), ()),  # dnsmasq 2.90 acknowledges 1 here
        ((("blksize", "65464"),), (("blksize", "1468"),)),  # clamped to the MTU
        ((("blksize", "9000"),), (("blksize", "1468"),)),
        ((("blksize", "abc"),), ()),  # tftpy 0.8.7 died on this
        ((("blksize", ""),), ()),
        ((("blksize", "-512"),), ()),
        ((("blksize", "+512"),), ()),
        ((("blksize", " 512"),), ()),
        ((("blksize", "5\u00b9\u00b2"),), ()),  # superscript digits are isdigit()
        ((("blksize", "\uff15\uff11\uff12"),), ()),  # fullwidth digits too
        ((("blksize", "9" * 5000),), ()),  # past int()'s digit limit: still no exception
        ((("blksize", "0001024"),), (("blksize", "1024"),)),
        ((("tsize", "0"),), (("tsize", "1000"),)),
        ((("tsize", "12"),), (("tsize", "1000"),)),
        ((("tsize", "x"),), ()),
        ((("timeout", "1"),), (("timeout", "1"),)),
        ((("timeout", "255"),), (("timeout", "255"),)),
        ((("timeout", "0"),), ()),
        ((("timeout", "256"),), ()),
        ((("windowsize", "16"),), (("windowsize", "16"),)),
        ((("windowsize", "65535"),), (("windowsize", "64"),)),  # clamped to the config
        ((("windowsize", "0"),), ()),
        ((("windowsize", "65536"),), ()),
        ((("utimeout", "1000"), ("rollover", "0"), ("x", "y")), ()),  # unknown: ignored
        (
            (("tsize", "0"), ("bogus", "1"), ("blksize", "1432"), ("windowsize", "8")),
            (("tsize", "1000"), ("blksize", "1432"), ("windowsize", "8")),  # request order
        ),
    ],
)
def test_negotiation(
    options: tuple[tuple[str, str], ...], oack: tuple[tuple[str, str], ...]
) -> None:
    assert oack_of(*options) == oack


def test_negotiated_values() -> None:
    request = ReadRequest("f", options=(("blksize", "1432"), ("windowsize", "8"), ("timeout", "3")))
    assert negotiate(request, None, CONFIG) == Negotiated(
        1432, 8, 3.0, (("blksize", "1432"), ("windowsize", "8"), ("timeout", "3"))
    )
    assert negotiate(ReadRequest("f"), 10, CONFIG) == Negotiated(512, 1, None, ())


def test_tsize_needs_a_known_size_octet_mode_and_permission() -> None:
    assert oack_of(("tsize", "0"), size=None) == ()
    assert oack_of(("tsize", "0"), size=0) == (("tsize", "0"),)
    assert oack_of(("tsize", "0"), mode=Mode.NETASCII) == ()
    assert oack_of(("tsize", "0"), config=SessionConfig(allow_tsize=False)) == ()


def test_blksize_is_clamped_to_config_and_mtu() -> None:
    assert oack_of(("blksize", "4096"), config=SessionConfig(max_blksize=1024)) == (
        ("blksize", "1024"),
    )
    jumbo = SessionConfig(max_blksize=65464, mtu=9000)
    assert oack_of(("blksize", "65464"), config=jumbo) == (("blksize", "8968"),)


def test_oack_then_ack_0_then_data() -> None:
    data = bytes(range(256)) * 10
    request = ReadRequest("f", options=(("tsize", "0"), ("blksize", "1000"), ("nope", "1")))
    session = TftpSession(request, Source(data), CONFIG, now=0.0)
    assert session.state is State.SENT_OACK
    assert session.datagrams_to_send(0.0) == [encode_oack((("tsize", "2560"), ("blksize", "1000")))]
    session.receive_datagram(encode_ack(1), 0.0)  # not yet sent: ignored
    assert session.datagrams_to_send(0.0) == []
    session.handle_timer(1.0)  # the OACK is retransmitted like data
    assert session.datagrams_to_send(1.0) == [encode_oack((("tsize", "2560"), ("blksize", "1000")))]
    session.receive_datagram(encode_ack(0), 1.5)
    assert session.datagrams_to_send(1.5) == [encode_data(1, data[:1000])]
    session.receive_datagram(encode_ack(0), 1.6)  # a duplicate ACK 0: no resend
    assert session.datagrams_to_send(1.6) == []
    assert session.retransmits == 1


def test_only_unusable_options_means_plain_data() -> None:
    request = ReadRequest("f", options=(("blksize", "abc"), ("tsize", "0")))
    session = TftpSession(request, Source(b"hi", size=None), CONFIG, now=0.0)
    assert session.state is State.SENDING
    assert session.datagrams_to_send(0.0) == [encode_data(1, b"hi")]


# -- screening requests on port 69 ---------------------------------------------------------


def test_accepted_request() -> None:
    decision = screen_request(b"\x00\x01/pxelinux.cfg/01-aa-bb-cc-dd-ee-ff\x00octet\x00")
    assert decision == Accepted(
        ReadRequest("/pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"), ("pxelinux.cfg", "01-aa-bb-cc-dd-ee-ff")
    )


def test_write_request_is_refused_read_only() -> None:
    decision = screen_request(encode_request(Opcode.WRQ, "upload.bin"))
    assert isinstance(decision, Rejected)
    assert decision.reason == "write_request"
    assert decision.datagram is not None
    assert decode(decision.datagram) == Error(ErrorCode.ACCESS_VIOLATION, "read-only server")


@pytest.mark.parametrize(
    ("data", "reason", "code"),
    [
        (b"\x00\x01caf\xc3\xa9\x00octet\x00", "not_ascii", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x01f\x00mail\x00", "bad_mode", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x01f", "no_nul", ErrorCode.ILLEGAL_OPERATION),
        (b"\x00\x01../../etc/shadow\x00octet\x00", "parent", ErrorCode.ACCESS_VIOLATION),
        (b"\x00\x01..\\..\\boot.ini\x00octet\x00", "parent", ErrorCode.ACCESS_VIOLATION),
        (b"\x00\x01a\x1bb\x00octet\x00", "control", ErrorCode.ACCESS_VIOLATION),
        (b"\x00\x01/\x00octet\x00", "empty", ErrorCode.ACCESS_VIOLATION),
    ],
)
def test_refused_requests_get_an_error(data: bytes, reason: str, code: int) -> None:
    decision = screen_request(data)
    assert isinstance(decision, Rejected)
    assert decision.reason == reason
    assert decision.datagram is not None
    reply = decode(decision.datagram)
    assert isinstance(reply, Error) and reply.code == code and reply.message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (b"GET / HTTP/1.1\r\n", "opcode"),
        (encode_ack(0), "not_a_request"),
        (error_datagram(0, "x"), "not_a_request"),  # never answer an ERROR: no loops
        (encode_data(1, b"x"), "not_a_request"),
    ],
)
def test_stray_datagrams_are_dropped_silently(data: bytes, reason: str) -> None:
    decision = screen_request(data)
    assert isinstance(decision, Rejected)
    assert (decision.reason, decision.datagram) == (reason, None)


def test_absolute_paths_refused_when_configured() -> None:
    decision = screen_request(b"\x00\x01/ipxe.efi\x00octet\x00", strip_leading_slash=False)
    assert isinstance(decision, Rejected) and decision.reason == "absolute"


def test_unknown_tid() -> None:
    assert decode(UNKNOWN_TID) == Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
