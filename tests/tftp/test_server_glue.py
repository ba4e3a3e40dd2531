"""The TFTP server's asyncio glue on real UDP sockets on loopback: listener, transfers, shutdown.

The pure core has its own tests (test_session.py, test_negotiation.py) and the whole appliance
is driven by real clients in test_interop.py; these tests sit between them. The server runs in
the test's event loop and the client is a plain non-blocking socket read through the same loop,
so every step is awaited and nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import MalformedPacket
from provisioner.tftp.negotiation import DEFAULT_BLKSIZE, SessionConfig
from provisioner.tftp.packet import (
    Data,
    Error,
    ErrorCode,
    Mode,
    Opcode,
    decode,
    encode_ack,
    encode_request,
)
from provisioner.tftp.server import TftpServer, TftpServerConfig, TransferRecord
from provisioner.tftp.sources import SourceResolver

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"
FILE_NAME = "boot.bin"
FILE_SIZE = 7 * DEFAULT_BLKSIZE + 123  # several blocks and a short last one
REPLY_WAIT = 5.0  # seconds: far beyond a loopback round trip, short enough to fail fast

# A socket or file the server forgets to close is an error even when the garbage collector
# closes it before the checks below look.
pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")


@dataclass
class Glue:
    server: TftpServer
    content: bytes
    records: list[TransferRecord] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return self.server.address


class Client:
    """A TFTP reader on a plain UDP socket, one datagram at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def receive(self) -> tuple[bytes, Address]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), REPLY_WAIT)
        return data, (addr[0], addr[1])

    def waiting(self) -> bytes | None:
        """A datagram already delivered to the socket, or None: the kernel has nothing."""
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def send(self, datagram: bytes, to: Address) -> None:
        self.sock.sendto(datagram, to)

    async def request(self, server: Address, name: str = FILE_NAME) -> tuple[Data, Address]:
        """RRQ without options: the first DATA, and the transfer's port (the server's TID)."""
        self.send(encode_request(Opcode.RRQ, name, Mode.OCTET), server)
        datagram, tid = await self.receive()
        packet = decode(datagram)
        assert isinstance(packet, Data), f"expected DATA 1, got {packet}"
        assert packet.block == 1 and tid != server
        return packet, tid

    async def finish(self, first: Data, tid: Address) -> bytes:
        """ACK block by block from `first` to the short last block; the file's bytes."""
        received, packet = bytearray(first.data), first
        while True:
            self.send(encode_ack(packet.block), tid)
            if len(packet.data) < DEFAULT_BLKSIZE:
                return bytes(received)
            datagram, sender = await self.receive()
            assert sender == tid
            following = decode(datagram)
            assert isinstance(following, Data), f"expected DATA {packet.block + 1}: {following}"
            assert following.block == packet.block + 1
            received += following.data
            packet = following

    async def fetch(self, server: Address, name: str = FILE_NAME) -> bytes:
        return await self.finish(*await self.request(server, name))

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def clients(count: int) -> Iterator[list[Client]]:
    made = [Client() for _ in range(count)]
    try:
        yield made
    finally:
        for client in made:
            client.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run until `condition` holds (bounded by REPLY_WAIT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLY_WAIT
    while not condition():
        assert loop.time() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.005)


def open_fds() -> set[str]:
    gc.collect()  # sockets of earlier tests that are only garbage now close here, not later
    return set(os.listdir("/proc/self/fd"))


def armed_timers(loop: asyncio.AbstractEventLoop) -> set[asyncio.TimerHandle]:
    # BaseEventLoop keeps its call_at handles in _scheduled; no public API lists them.
    scheduled: list[asyncio.TimerHandle] = vars(loop)["_scheduled"]
    return {handle for handle in scheduled if not handle.cancelled()}


def port_is_free(address: Address) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
            return False
    return True


async def port_refuses(client: Client, tid: Address) -> bool:
    """True when no socket takes the client's datagrams to `tid` any more: the kernel answers
    ICMP port unreachable, which a connected UDP socket reports as ECONNREFUSED. (Sent from the
    client itself: a transfer socket still open would take them, being connected to it.)"""
    loop = asyncio.get_running_loop()
    client.sock.connect(tid)
    client.sock.send(encode_ack(1))
    try:
        await asyncio.wait_for(loop.sock_recv(client.sock, 65536), 0.5)
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False  # a socket is bound there and took the datagram
    return False  # it even answered


def still_registered(loop: asyncio.AbstractEventLoop, fds: set[str]) -> list[int]:
    """The descriptors among `fds` that the loop still watches (and stops watching now)."""
    return [fd for fd in map(int, fds) if loop.remove_reader(fd) | loop.remove_writer(fd)]


def make_server(root: Path, records: list[TransferRecord],
                session: SessionConfig | None = None) -> TftpServer:
    config = TftpServerConfig(listen=LOOPBACK, port=0, session=session or SessionConfig())
    return TftpServer(SourceResolver(root), config, records.append)


@pytest.fixture
async def glue(tmp_path: Path) -> AsyncIterator[Glue]:
    content = os.urandom(FILE_SIZE)
    (tmp_path / FILE_NAME).write_bytes(content)
    records: list[TransferRecord] = []
    server = make_server(tmp_path, records)
    await server.start()
    try:
        yield Glue(server, content, records)
    finally:
        await server.close()


async def test_server_binds_its_port_and_frees_it_on_close(tmp_path: Path) -> None:
    server = make_server(tmp_path, [])
    await server.start()
    host, port = server.address
    assert host == LOOPBACK and port > 0
    assert not port_is_free((host, port)), "the listener does not hold its port"
    await server.close()
    assert port_is_free((host, port)), "close() returned with the listener still bound"


# Random bytes that are no request (dropped without a word, nothing to reflect) and a request
# cut short (answered ERROR 4, since a real client may be waiting for it).
MALFORMED = {
    "not_a_request": (b"\x00\x63" + os.urandom(16), None),
    "truncated_rrq": (b"\x00\x01" + FILE_NAME.encode(), ErrorCode.ILLEGAL_OPERATION),
}


@pytest.mark.parametrize(("datagram", "answer"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_counted_and_the_next_rrq_is_served(
    glue: Glue, datagram: bytes, answer: ErrorCode | None
) -> None:
    with pytest.raises(MalformedPacket) as decoded:
        decode(datagram)
    counter = f"rejected:{decoded.value.reason}"
    with clients(1) as (client,):
        client.send(datagram, glue.address)
        await until(lambda: glue.server.counters["requests"] == 1, "the malformed request")
        assert glue.server.counters[counter] == 1
        assert glue.server.active() == 0
        reply = client.waiting()  # the listener answers at once if it answers at all
        if answer is None:
            assert reply is None, f"random traffic was answered: {reply!r}"
        else:
            assert reply is not None, "a truncated request got no ERROR"
            error = decode(reply)
            assert isinstance(error, Error) and error.code == answer

        assert await client.fetch(glue.address) == glue.content
    counters = glue.server.counters
    await until(lambda: counters["served"] == 1, "the end of the transfer")
    assert (counters["requests"], counters[counter]) == (2, 1)
    assert counters["bytes"] == len(glue.content)
    assert [(r.filename, r.ok) for r in glue.records] == [(FILE_NAME, True)]
    assert glue.server.active() == 0


async def test_malformed_datagram_on_a_transfer_port_ends_that_transfer(glue: Glue) -> None:
    garbage = b"\x00\x03"  # DATA without a block number
    with pytest.raises(MalformedPacket):
        decode(garbage)
    with clients(1) as (client,):
        _, tid = await client.request(glue.address)
        client.send(garbage, tid)
        reply, sender = await client.receive()
        error = decode(reply)
        assert sender == tid
        assert isinstance(error, Error) and error.code == ErrorCode.ILLEGAL_OPERATION
        await until(lambda: glue.server.active() == 0, "the end of the transfer")
        assert await port_refuses(client, tid), "the transfer's port is still open"
    assert glue.server.counters["failed:malformed"] == 1
    assert [r.ok for r in glue.records] == [False]


async def test_stranger_on_a_transfer_port_gets_error_5_and_the_transfer_goes_on(
    glue: Glue,
) -> None:
    with clients(2) as (client, stranger):
        first, tid = await client.request(glue.address)
        stranger.send(encode_ack(1), tid)
        reply, sender = await stranger.receive()
        error = decode(reply)
        assert sender == tid
        assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_TID
        assert glue.server.counters["unknown_tid"] == 1
        assert await client.finish(first, tid) == glue.content
        await until(lambda: glue.server.counters["served"] == 1, "the end of the transfer")
        assert stranger.waiting() is None, "the stranger got more than one ERROR"


async def test_close_with_transfers_in_flight_ends_them_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    (tmp_path / FILE_NAME).write_bytes(os.urandom(FILE_SIZE))
    loop_errors: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    records: list[TransferRecord] = []
    try:
        with clients(3) as in_flight:
            fds_before, timers_before = open_fds(), armed_timers(loop)
            tasks_before = asyncio.all_tasks()
            # A retransmit timeout far beyond the test: the timers are armed when close() runs.
            server = make_server(tmp_path, records, SessionConfig(timeout=60, max_timeout=60))
            await server.start()
            listener = server.address
            tids = [(await client.request(listener))[1] for client in in_flight]
            addresses = sorted(client.address for client in in_flight)
            assert server.active() == len(in_flight)
            assert armed_timers(loop) - timers_before, "no retransmit timer armed"
            fds_during = open_fds() - fds_before  # listener, epoll, transfer sockets, files

            await server.close()

            for client, tid in zip(in_flight, tids, strict=True):
                reply, sender = await client.receive()
                error = decode(reply)
                assert sender == tid
                assert isinstance(error, Error) and error.code == ErrorCode.NOT_DEFINED
                assert "shutting down" in error.message
                assert await port_refuses(client, tid), f"transfer port {tid[1]} still open"
        assert server.active() == 0
        assert server.counters["failed:aborted"] == len(in_flight)
        assert sorted(r.client for r in records) == addresses
        assert all(not r.ok for r in records)
        assert armed_timers(loop) - timers_before == set(), "a transfer timer outlived close()"
        assert asyncio.all_tasks() - tasks_before == set(), "a task outlived close()"
        assert open_fds() - fds_before == set(), "sockets, epoll or files left open"
        assert still_registered(loop, fds_during) == [], "closed sockets still watched"
        assert port_is_free(listener)
        assert loop_errors == []
    finally:
        loop.set_exception_handler(previous_handler)


async def test_resent_rrq_from_the_same_tid_is_a_duplicate_not_a_second_transfer(
        tmp_path: Path) -> None:
    # One slot in all: a second transfer for the resent RRQ would take it, and the client's
    # next file would then be refused "busy".
    content = os.urandom(FILE_SIZE)
    (tmp_path / FILE_NAME).write_bytes(content)
    records: list[TransferRecord] = []
    config = TftpServerConfig(listen=LOOPBACK, port=0, max_transfers=1)
    server = TftpServer(SourceResolver(tmp_path), config, records.append)
    await server.start()
    try:
        with clients(1) as (client,):
            first, tid = await client.request(server.address)
            client.send(encode_request(Opcode.RRQ, FILE_NAME, Mode.OCTET), server.address)
            await until(lambda: server.counters["requests"] == 2, "the resent RRQ")
            assert server.counters["duplicate_rrq"] == 1
            assert server.active() == 1
            assert await client.finish(first, tid) == content
            await until(lambda: len(records) == 1, "the end of the transfer")
            # The TID's transfer is over: the same TID's next RRQ is a new transfer.
            assert await client.fetch(server.address) == content
            await until(lambda: len(records) == 2, "the second transfer")
    finally:
        await server.close()
    assert [record.ok for record in records] == [True, True]
    assert not any(key.startswith(("rejected:", "failed:")) for key in server.counters)
    assert server.counters["duplicate_rrq"] == 1 and server.counters["served"] == 2
