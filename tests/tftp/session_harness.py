"""A harness for the sans-IO read session, driven with a hand-moved clock (aioquic's
test_connection.py way).

`Client` is a tiny RFC 1350 / 2347 / 7440 reader: it ACKs the last block of each window, ACKs
the last in-order block once when it sees a gap, and re-ACKs after a duplicate. `run` moves
datagrams between it and a session, dropping the ones a test names, and jumps the clock to the
session's timer whenever nothing is in flight. `BytesSource` is an in-memory Source that counts
its reads and closes and can fail like a disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import (
    Ack,
    Data,
    Mode,
    OptionAck,
    Options,
    ReadRequest,
    decode,
    encode_ack,
)
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import Event


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
