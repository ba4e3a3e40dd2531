"""The sans-IO read session, driven with a hand-moved clock (aioquic's test_connection.py way).

`Client` is a tiny RFC 1350 / 2347 / 7440 reader: it ACKs the last block of each window, ACKs
the last in-order block once when it sees a gap, and re-ACKs after a duplicate. `run` moves
datagrams between it and a session, dropping the ones a test names, and jumps the clock to the
session's timer whenever nothing is in flight.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import ValidationError
from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Mode,
    OptionAck,
    Options,
    ReadRequest,
    decode,
    encode_ack,
    encode_data,
    encode_error,
)
from provisioner.tftp.readers import READAHEAD
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import (
    TRANSITIONS,
    Event,
    State,
    TransferCompleted,
    TransferFailed,
)


class BytesSource:
    """An in-memory Source; `fail_at` makes read() raise like a disk error would."""

    def __init__(self, data: bytes, *, known_size: bool = True, fail_at: int | None = None):
        self.data = data
        self.size = len(data) if known_size else None
        self.fail_at = fail_at
        self.closed = 0
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.fail_at is not None and offset >= self.fail_at:
            raise OSError(5, "Input/output error")
        return self.data[offset : offset + length]

    def close(self) -> None:
        self.closed += 1


@dataclass
class Client:
    blksize: int = 512
    windowsize: int = 1
    expected: int = 1  # next block, counted without the 16-bit wrap
    received: bytearray = field(default_factory=bytearray)
    since_ack: int = 0
    gap_acked: bool = False
    done: bool = False
    oack: dict[str, str] = field(default_factory=dict)
    wire_blocks: list[int] = field(default_factory=list)

    def receive(self, datagram: bytes) -> bytes | None:
        packet = decode(datagram)
        if isinstance(packet, OptionAck):
            self.oack = dict(packet.options)
            self.blksize = int(self.oack.get("blksize", self.blksize))
            self.windowsize = int(self.oack.get("windowsize", self.windowsize))
            return encode_ack(0)
        assert isinstance(packet, Data), packet
        self.wire_blocks.append(packet.block)
        if packet.block != self.expected & 0xFFFF:
            if self.gap_acked:
                return None
            self.gap_acked, self.since_ack = True, 0  # RFC 7440: ACK the last in-order block
            return encode_ack((self.expected - 1) & 0xFFFF)
        self.gap_acked = False
        self.received += packet.data
        self.expected += 1
        self.since_ack += 1
        if len(packet.data) < self.blksize:
            self.done = True
        if self.done or self.since_ack == self.windowsize:
            self.since_ack = 0
            return encode_ack(packet.block)
        return None


@dataclass
class Network:
    """Drops the first transmission of the named DATA blocks and ACKs (wire numbers)."""

    drop_data: set[int] = field(default_factory=set)
    drop_acks: set[int] = field(default_factory=set)
    dropped: list[bytes] = field(default_factory=list)

    def passes(self, datagram: bytes) -> bool:
        packet = decode(datagram)
        drop = self.drop_data if isinstance(packet, Data) else self.drop_acks
        if isinstance(packet, Data | Ack) and packet.block in drop:
            drop.discard(packet.block)
            self.dropped.append(datagram)
            return False
        return True


def run(
    session: TftpSession, client: Client, net: Network | None = None, now: float = 0.0
) -> Event:
    net = net or Network()
    pending = session.datagrams_to_send(now)
    for _ in range(1_000_000):
        replies = [client.receive(d) for d in pending if net.passes(d)]
        for reply in replies:
            if reply is not None and net.passes(reply):
                session.receive_datagram(reply, now)
        event = session.next_event()
        if event is not None:
            return event
        pending = session.datagrams_to_send(now)
        if not pending:
            timer = session.get_timer()
            assert timer is not None and timer > now
            now = timer
            session.handle_timer(now)
            pending = session.datagrams_to_send(now)
    raise AssertionError("transfer did not end")


def rrq(filename: str = "f", mode: Mode = Mode.OCTET, **options: int | str) -> ReadRequest:
    return ReadRequest(filename, mode, tuple((k, str(v)) for k, v in options.items()))


def opts(options: Mapping[str, int]) -> Options:
    return tuple((name, str(value)) for name, value in options.items())


def pattern(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


def blocks(datagrams: Iterable[bytes]) -> list[int]:
    out = []
    for datagram in datagrams:
        packet = decode(datagram)
        assert isinstance(packet, Data)
        out.append(packet.block)
    return out


CONFIG = SessionConfig()

# -- complete transfers --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
@pytest.mark.parametrize(
    "options", [{}, {"blksize": 1468}, {"blksize": 8, "windowsize": 4}, {"windowsize": 16}]
)
def test_transfer_reassembles_the_source(size: int, options: dict[str, int]) -> None:
    data = pattern(size)
    source = BytesSource(data)
    client = Client()
    event = run(TftpSession(ReadRequest("f", options=opts(options)), source, CONFIG, 0.0), client)
    assert event == TransferCompleted(size, 0.0, 0)
    assert bytes(client.received) == data
    assert source.closed == 1


def test_without_options_data_1_goes_out_at_once() -> None:
    session = TftpSession(rrq(), BytesSource(b"hello"), CONFIG, now=10.0)
    assert session.datagrams_to_send(10.0) == [encode_data(1, b"hello")]
    assert session.get_timer() == 11.0
    session.receive_datagram(encode_ack(1), 10.25)
    assert session.next_event() == TransferCompleted(5, 0.25, 0)
    assert session.state is State.DONE
    assert session.get_timer() is None
    assert session.datagrams_to_send(10.25) == []


def test_empty_file_is_one_empty_block() -> None:
    session = TftpSession(rrq(), BytesSource(b""), CONFIG, now=0.0)
    assert session.datagrams_to_send(0.0) == [encode_data(1, b"")]


def test_exact_multiple_ends_with_an_empty_block() -> None:
    data = pattern(1024)
    session = TftpSession(rrq(), BytesSource(data), CONFIG, now=0.0)
    assert session.datagrams_to_send(0.0) == [encode_data(1, data[:512])]
    session.receive_datagram(encode_ack(1), 0.0)
    assert session.datagrams_to_send(0.0) == [encode_data(2, data[512:])]
    session.receive_datagram(encode_ack(2), 0.0)
    assert session.datagrams_to_send(0.0) == [encode_data(3, b"")]
    session.receive_datagram(encode_ack(3), 0.0)
    assert isinstance(session.next_event(), TransferCompleted)


def test_source_is_read_lazily() -> None:
    source = BytesSource(pattern(512 * 100))
    session = TftpSession(rrq(windowsize=4), source, CONFIG, now=0.0)
    assert len(session.datagrams_to_send(0.0)) == 1  # OACK
    assert source.reads == 0
    session.receive_datagram(encode_ack(0), 0.0)
    assert len(session.datagrams_to_send(0.0)) == 4
    assert source.reads == 1  # one READAHEAD-sized read covers the window


def test_source_is_read_ahead_in_chunks_each_byte_once() -> None:
    data = pattern(READAHEAD * 3 + 100)
    source = BytesSource(data)
    session = TftpSession(rrq(), source, CONFIG, now=0.0)
    received = bytearray()
    block = 1
    while (event := session.next_event()) is None:
        for datagram in session.datagrams_to_send(0.0):
            received += datagram[4:]
        session.receive_datagram(encode_ack(block & 0xFFFF), 0.0)
        block += 1
    assert isinstance(event, TransferCompleted)
    assert bytes(received) == data
    assert source.reads == 4  # three full chunks and the short one that ends the file


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


# -- windows (RFC 7440) ----------------------------------------------------------------------


def test_window_of_16_with_one_lost_block() -> None:
    data = pattern(512 * 40 + 100)
    session = TftpSession(rrq(windowsize=16), BytesSource(data), CONFIG, now=0.0)
    session.datagrams_to_send(0.0)  # OACK
    session.receive_datagram(encode_ack(0), 0.0)
    window = session.datagrams_to_send(0.0)
    assert blocks(window) == list(range(1, 17))
    # Block 5 is lost; the client saw 1..4, then 6 out of order, and ACKs 4.
    session.receive_datagram(encode_ack(4), 0.1)
    resent = session.datagrams_to_send(0.1)
    assert blocks(resent) == list(range(5, 21))
    assert resent[:12] == window[4:]  # the same datagrams, not re-read
    assert session.retransmits == 12
    session.receive_datagram(encode_ack(4), 0.1)  # a second ACK 4 for block 7: no resend
    assert session.datagrams_to_send(0.1) == []
    session.receive_datagram(encode_ack(20), 0.2)
    assert blocks(session.datagrams_to_send(0.2)) == list(range(21, 37))
    session.receive_datagram(encode_ack(36), 0.3)
    assert blocks(session.datagrams_to_send(0.3)) == [37, 38, 39, 40, 41]
    session.receive_datagram(encode_ack(41), 0.4)
    assert session.next_event() == TransferCompleted(len(data), 0.4, 12)


def test_window_of_16_with_one_lost_block_end_to_end() -> None:
    data = pattern(512 * 40 + 100)
    client = Client()
    event = run(
        TftpSession(rrq(windowsize=16), BytesSource(data), CONFIG, 0.0),
        client,
        Network(drop_data={5}),
    )
    assert bytes(client.received) == data
    assert event == TransferCompleted(len(data), 0.0, 12)


def test_timer_resends_the_whole_window() -> None:
    session = TftpSession(rrq(windowsize=4), BytesSource(pattern(512 * 10)), CONFIG, now=0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_ack(0), 0.0)
    window = session.datagrams_to_send(0.0)
    session.receive_datagram(encode_ack(2), 0.5)
    assert blocks(session.datagrams_to_send(0.5)) == [3, 4, 5, 6]
    session.handle_timer(1.5)
    assert blocks(session.datagrams_to_send(1.5)) == [3, 4, 5, 6]
    assert session.datagrams_to_send(1.5) == []
    assert window[2] == encode_data(3, pattern(512 * 10)[1024:1536])


@pytest.mark.parametrize("loss", [{1}, {16}, {17}, {1, 2, 3}, {8, 24, 41}])
def test_random_window_losses_still_deliver(loss: set[int]) -> None:
    data = pattern(512 * 41)
    client = Client()
    net = Network(drop_data=set(loss), drop_acks={16, 32})
    event = run(TftpSession(rrq(windowsize=16), BytesSource(data), CONFIG, 0.0), client, net)
    assert isinstance(event, TransferCompleted)
    assert bytes(client.received) == data


def test_block_numbers_roll_over_to_zero() -> None:
    blksize, count = 8, 65536 + 20
    data = pattern(blksize * count + 3)
    client = Client()
    net = Network(drop_data={0})  # the first block after the wrap is lost once
    session = TftpSession(rrq(blksize=blksize, windowsize=16), BytesSource(data), CONFIG, 0.0)
    event = run(session, client, net)
    assert bytes(client.received) == data
    assert isinstance(event, TransferCompleted) and event.retransmits > 0
    wrap = client.wire_blocks.index(0)  # the first 0 was dropped; the timer resent it
    assert client.wire_blocks[wrap - 1 : wrap + 1] == [65535, 0]
    assert 1 in client.wire_blocks[wrap:]
    assert client.expected - 1 == count + 1


def test_rollover_ack_at_the_wrap() -> None:
    # Block 65536 goes out as 0; an ACK 0 then means "block 65536", not the OACK.
    session = TftpSession(
        rrq(blksize=8, windowsize=1), BytesSource(pattern(8 * 65540)), CONFIG, now=0.0
    )
    session.receive_datagram(encode_ack(0), 0.0)
    for block in range(1, 65536):
        session.receive_datagram(encode_ack(block & 0xFFFF), 0.0)
    session.datagrams_to_send(0.0)
    session.receive_datagram(encode_ack(65535), 0.0)  # duplicate
    assert session.datagrams_to_send(0.0) == []
    session.receive_datagram(encode_ack(0), 0.0)
    assert blocks(session.datagrams_to_send(0.0)) == [1]


# -- netascii ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        (b"a\nb", b"a\r\nb"),
        (b"a\rb", b"a\r\0b"),
        (b"a\r\nb", b"a\r\0\r\nb"),
        (b"\n" * 600, b"\r\n" * 600),  # expansion crosses block boundaries
        (b"x" * 511 + b"\n", b"x" * 511 + b"\r\n"),  # CR ends block 1, LF starts block 2
        (b"", b""),
    ],
)
def test_netascii_is_converted(text: bytes, wire: bytes) -> None:
    client = Client()
    run(TftpSession(rrq(mode=Mode.NETASCII), BytesSource(text), CONFIG, 0.0), client)
    assert bytes(client.received) == wire


def test_netascii_does_not_answer_tsize() -> None:
    session = TftpSession(
        rrq(mode=Mode.NETASCII, tsize=0, blksize=1024), BytesSource(b"a\n"), CONFIG, now=0.0
    )
    assert session.negotiated.oack == (("blksize", "1024"),)


# -- configuration and the table -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_blksize": 7},
        {"max_blksize": 65465},
        {"mtu": 39},
        {"timeout": 0.0},
        {"timeout": 10.0, "max_timeout": 5.0},
        {"max_retries": -1},
        {"max_windowsize": 0},
        {"max_windowsize": 65536},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SessionConfig(**kwargs)  # type: ignore[arg-type]


def test_terminal_states_have_no_transitions() -> None:
    assert TRANSITIONS[State.DONE] == {}
    assert TRANSITIONS[State.FAILED] == {}
    for transitions in TRANSITIONS.values():
        for target, _action in transitions.values():
            assert target in TRANSITIONS


# -- fuzz --------------------------------------------------------------------------------------

_datagrams = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 65535).map(encode_ack),
    st.integers(0, 40).map(encode_ack),
    st.builds(encode_error, st.integers(0, 65535), st.text(max_size=10)),
)
_steps = st.lists(st.tuples(st.booleans(), _datagrams, st.floats(0.0, 20.0)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3000),
    st.sampled_from([{}, {"blksize": 64}, {"windowsize": 4, "blksize": 100}, {"tsize": 0}]),
    st.sampled_from(Mode),
    _steps,
)
def test_session_fuzz_never_raises(
    size: int, options: dict[str, int], mode: Mode, steps: list[tuple[bool, bytes, float]]
) -> None:
    config = SessionConfig(max_retries=3)
    source = BytesSource(pattern(size))
    session = TftpSession(ReadRequest("f", mode, opts(options)), source, config, now=0.0)
    now = 0.0
    events: list[Event] = []
    for is_timer, datagram, delay in steps:
        now += delay
        if is_timer:
            session.handle_timer(now)
        else:
            session.receive_datagram(datagram, now)
        for out in session.datagrams_to_send(now):
            assert isinstance(decode(out), Data | OptionAck | Error)
        timer = session.get_timer()
        assert timer is None or timer <= now + config.max_timeout
        while (event := session.next_event()) is not None:
            events.append(event)
    assert len(events) <= 1
    if session.state in (State.DONE, State.FAILED):
        assert len(events) == 1 and session.get_timer() is None and source.closed == 1
    else:
        assert not events and session.get_timer() is not None and source.closed == 0


# -- ack_and_send, the server's per-block path ------------------------------------------------


@pytest.mark.parametrize("windowsize", [1, 4])
@pytest.mark.parametrize("seed", range(20))
def test_ack_and_send_matches_receive_datagram(windowsize: int, seed: int) -> None:
    """The fast path is an optimisation only: same datagrams, same timer, same event as
    receive_datagram + datagrams_to_send, for ACKs in order, duplicated, partial, future,
    wrapped and random, through the end of the transfer."""
    rng = random.Random(seed)

    def data_blocks(datagrams: list[bytes]) -> list[int]:
        return [p.block for d in datagrams if isinstance(p := decode(d), Data)]

    data = pattern(rng.choice([0, 512 * 9, 512 * 9 + 7, READAHEAD + 1000]))
    request = rrq(blksize=512) if windowsize == 1 else rrq(windowsize=windowsize)
    slow = TftpSession(request, BytesSource(data), CONFIG, now=0.0)
    fast = TftpSession(request, BytesSource(data), CONFIG, now=0.0)
    now = 0.0
    first = slow.datagrams_to_send(now)
    assert fast.datagrams_to_send(now) == first
    last = max(data_blocks(first), default=0)  # the last DATA block sent, as on the wire
    for _ in range(400):
        now += 0.01
        wire = rng.choice([last, last, last, last - 1, last - 2, last + 1,
                           rng.randrange(65536)]) & 0xFFFF
        slow.receive_datagram(encode_ack(wire), now)
        expected = slow.datagrams_to_send(now)
        assert fast.ack_and_send(wire, now) == expected
        assert fast.get_timer() == slow.get_timer()
        assert fast.state is slow.state
        assert (fast.bytes_sent, fast.retransmits) == (slow.bytes_sent, slow.retransmits)
        last = max(data_blocks(expected), default=last)
        event = slow.next_event()
        assert fast.next_event() == event
        if event is not None:
            break
