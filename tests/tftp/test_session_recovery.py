"""The sans-IO read session when things go wrong: lost DATA and ACKs, duplicates, the
retransmit timer and its backoff, errors from the peer, garbage, a failing source, an abort.

The harness (a client, a lossy network, a hand-moved clock) is in session_harness.py.
"""

from __future__ import annotations

import pytest

from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import Error, ErrorCode, decode, encode_ack, encode_data, encode_error
from provisioner.tftp.readers import READAHEAD
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import State, TransferCompleted, TransferFailed
from tests.tftp.session_harness import (
    CONFIG,
    BytesSource,
    Client,
    Network,
    blocks,
    pattern,
    rrq,
    run,
)

# -- loss, duplicates and timers -------------------------------------------------------------


def test_lost_data_is_resent_by_the_timer_only() -> None:
    data = pattern(700)
    session = TftpSession(rrq(), BytesSource(data), CONFIG, now=0.0)
    first = session.datagrams_to_send(0.0)  # lost on the way
    session.handle_timer(0.5)  # early: nothing
    assert session.datagrams_to_send(0.5) == []
    assert session.get_timer() == 1.0
    session.handle_timer(1.0)
    assert session.datagrams_to_send(1.0) == first
    assert session.get_timer() == 3.0  # backoff: 2 s
    session.receive_datagram(encode_ack(1), 1.5)
    assert session.datagrams_to_send(1.5) == [encode_data(2, data[512:])]
    assert session.get_timer() == 2.5  # progress resets the backoff
    session.receive_datagram(encode_ack(2), 1.75)
    assert session.next_event() == TransferCompleted(700, 1.75, 1)


def test_lost_ack_is_recovered_by_timer_and_client() -> None:
    data = pattern(512 * 3 + 5)
    client = Client()
    net = Network(drop_acks={2})
    event = run(TftpSession(rrq(), BytesSource(data), CONFIG, now=0.0), client, net)
    assert isinstance(event, TransferCompleted)
    assert event.retransmits == 1
    assert event.duration == 1.0
    assert bytes(client.received) == data
    assert len(net.dropped) == 1


def test_duplicate_ack_never_resends() -> None:
    """Sorcerer's Apprentice (RFC 1123 section 4.2.3.1): only the timer resends."""
    data = pattern(512 * 4)
    session = TftpSession(rrq(), BytesSource(data), CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_ack(1), 0.1)
    assert blocks(session.datagrams_to_send(0.1)) == [2]
    session.receive_datagram(encode_ack(1), 0.2)  # the duplicate of a delayed ACK
    session.receive_datagram(encode_ack(1), 0.3)
    assert session.datagrams_to_send(0.3) == []
    assert session.get_timer() == 1.1
    session.receive_datagram(encode_ack(2), 0.4)
    assert blocks(session.datagrams_to_send(0.4)) == [3]
    assert session.retransmits == 0


def test_ack_for_a_block_not_yet_sent_is_ignored() -> None:
    session = TftpSession(rrq(windowsize=4), BytesSource(pattern(512 * 20)), CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_ack(0), 0.0)
    assert blocks(session.datagrams_to_send(0.0)) == [1, 2, 3, 4]
    for block in (5, 9, 40000, 65535):
        session.receive_datagram(encode_ack(block), 0.1)
    assert session.datagrams_to_send(0.1) == []
    assert session.state is State.SENDING
    session.receive_datagram(encode_ack(4), 0.2)
    assert blocks(session.datagrams_to_send(0.2)) == [5, 6, 7, 8]


def test_timeout_after_max_retries_with_capped_backoff() -> None:
    config = SessionConfig(timeout=1.0, max_timeout=4.0, max_retries=4)
    source = BytesSource(pattern(100))
    session = TftpSession(rrq(), source, config, now=0.0)
    first = session.datagrams_to_send(0.0)
    timers = []
    while (timer := session.get_timer()) is not None:
        timers.append(timer)
        session.handle_timer(timer)
        out = session.datagrams_to_send(timer)
        assert out in ([], first)
    assert timers == [1.0, 3.0, 7.0, 11.0, 15.0]  # 1, 2, 4, 4 (cap), 4
    event = session.next_event()
    assert isinstance(event, TransferFailed)
    assert (event.reason, event.error_code, event.retransmits) == ("timeout", None, 4)
    assert event.duration == 15.0
    assert session.state is State.FAILED
    assert source.closed == 1
    assert session.next_event() is None


def test_negotiated_timeout_is_the_retransmit_base() -> None:
    session = TftpSession(rrq(timeout=3), BytesSource(b"x"), CONFIG, now=0.0)
    assert session.datagrams_to_send(0.0) == [b"\x00\x06timeout\x003\x00"]
    assert session.get_timer() == 3.0
    session.handle_timer(3.0)
    assert session.get_timer() == 3.0 + 6.0


def test_peer_error_ends_the_transfer_without_reply() -> None:
    source = BytesSource(pattern(2000))
    session = TftpSession(rrq(), source, CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_error(ErrorCode.DISK_FULL, "disk full"), 2.0)
    assert session.datagrams_to_send(2.0) == []
    assert session.next_event() == TransferFailed(
        "peer_error", ErrorCode.DISK_FULL, "disk full", 512, 2.0, 0
    )
    assert session.get_timer() is None
    assert source.closed == 1


def test_option_refused_by_client_after_oack() -> None:
    session = TftpSession(rrq(blksize=1024), BytesSource(b"x"), CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_error(ErrorCode.OPTION_REFUSED, "no"), 0.0)
    event = session.next_event()
    assert isinstance(event, TransferFailed)
    assert event.error_code == ErrorCode.OPTION_REFUSED


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "malformed"),
        (b"\x00", "malformed"),
        (b"\x00\x09\x00\x01", "malformed"),
        (b"\x00\x05\x00", "malformed"),
        (b"\x00\x03\x00\x01data", "illegal_operation"),
        (b"\x00\x01f\x00octet\x00", "illegal_operation"),
        (b"\x00\x06tsize\x000\x00", "illegal_operation"),
    ],
)
def test_garbage_mid_transfer_is_an_error_datagram(datagram: bytes, reason: str) -> None:
    source = BytesSource(pattern(2000))
    session = TftpSession(rrq(), source, CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(datagram, 1.0)
    out = session.datagrams_to_send(1.0)
    assert len(out) == 1
    packet = decode(out[0])
    assert isinstance(packet, Error)
    assert packet.code == ErrorCode.ILLEGAL_OPERATION
    event = session.next_event()
    assert isinstance(event, TransferFailed)
    assert (event.reason, event.error_code) == (reason, ErrorCode.ILLEGAL_OPERATION)
    assert source.closed == 1
    session.receive_datagram(encode_ack(1), 1.0)  # late: ignored
    assert session.datagrams_to_send(1.0) == []
    assert session.next_event() is None


def test_source_failure_is_error_0_not_an_exception() -> None:
    source = BytesSource(pattern(2 * READAHEAD), fail_at=READAHEAD)  # the second read fails
    session = TftpSession(rrq(), source, CONFIG, now=0.0)
    for block in range(1, READAHEAD // 512 + 1):
        session.datagrams_to_send(0.0)
        session.receive_datagram(encode_ack(block), 0.0)
    out = session.datagrams_to_send(0.0)
    assert [type(decode(d)) for d in out] == [Error]
    event = session.next_event()
    assert isinstance(event, TransferFailed)
    assert (event.reason, event.error_code) == ("source_error", 0)
    assert "Input/output error" in event.message
    assert source.closed == 1


def test_source_failure_on_the_first_block() -> None:
    session = TftpSession(rrq(), BytesSource(b"abc", fail_at=0), CONFIG, now=0.0)
    assert session.state is State.FAILED
    assert [type(decode(d)) for d in session.datagrams_to_send(0.0)] == [Error]


def test_abort_sends_error_0() -> None:
    source = BytesSource(pattern(4096))
    session = TftpSession(rrq(), source, CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.abort(1.0, "server shutting down")
    assert session.datagrams_to_send(1.0) == [encode_error(0, "server shutting down")]
    event = session.next_event()
    assert isinstance(event, TransferFailed) and event.reason == "aborted"
    session.abort(2.0)  # twice is harmless
    assert session.next_event() is None
    assert source.closed == 1


def test_late_final_ack_after_done_is_ignored() -> None:
    session = TftpSession(rrq(), BytesSource(b"x"), CONFIG, now=0.0)
    session.receive_datagram(encode_ack(1), 0.0)
    session.receive_datagram(encode_ack(1), 0.0)
    session.handle_timer(100.0)
    assert isinstance(session.next_event(), TransferCompleted)
    assert session.next_event() is None
    assert session.datagrams_to_send(100.0) == [encode_data(1, b"x")]  # only the first send
