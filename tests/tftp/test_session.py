"""The sans-IO read session: complete transfers, RFC 7440 windows, block numbers past 65535,
netascii, the configuration and the state table, fuzzing, and the server's per-block fast path.

Loss, timers and errors are in test_session_recovery.py; the harness (a client, a lossy
network, a hand-moved clock) in session_harness.py.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import ValidationError
from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import (
    Data,
    Error,
    Mode,
    OptionAck,
    ReadRequest,
    decode,
    encode_ack,
    encode_data,
    encode_error,
)
from provisioner.tftp.readers import READAHEAD
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import TRANSITIONS, Event, State, TransferCompleted
from tests.tftp.session_harness import (
    CONFIG,
    BytesSource,
    Client,
    Network,
    blocks,
    opts,
    pattern,
    rrq,
    run,
)

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
