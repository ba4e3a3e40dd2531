"""The TFTP server: thin asyncio glue around the sans-IO TftpSession.

Port 69 only receives requests. Each accepted read request gets its own UDP socket on an
ephemeral port, which is the server's transfer ID (RFC 1350 section 4); the session decides
everything else. A datagram to a transfer socket from any address but the client's gets ERROR 5
and changes nothing. Every way a transfer ends (done, failed, server shutdown) closes its socket
and its file and is counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import resource
import select
import socket
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import NotFound, ProvisionerError
from provisioner.tftp.packet import ErrorCode
from provisioner.tftp.paths import ForbiddenPath
from provisioner.tftp.session import (
    UNKNOWN_TID,
    Accepted,
    Event,
    SessionConfig,
    TftpSession,
    TransferCompleted,
    error_datagram,
    screen_request,
)
from provisioner.tftp.sources import SourceResolver

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass(frozen=True)
class TftpServerConfig:
    listen: str = "0.0.0.0"
    port: int = 69
    max_transfers: int = 512  # concurrent transfers in all
    max_per_client: int = 16  # concurrent transfers from one IP address
    session: SessionConfig = field(default_factory=SessionConfig)


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """What the service turns into a `tftp_served` / `tftp_failed` event on the node."""

    client: Address
    filename: str
    event: Event

    @property
    def ok(self) -> bool:
        return isinstance(self.event, TransferCompleted)


class TftpServer:
    def __init__(self, resolver: SourceResolver, config: TftpServerConfig | None = None,
                 on_transfer: Callable[[TransferRecord], None] | None = None) -> None:
        self.resolver = resolver
        self.config = config or TftpServerConfig()
        self.counters: collections.Counter[str] = collections.Counter()
        self._on_transfer = on_transfer
        self._listener: asyncio.DatagramTransport | None = None
        self._family: int = socket.AF_INET  # of the listener; transfer sockets use the same
        self._transfers: set[_Transfer] = set()
        self._per_client: collections.Counter[str] = collections.Counter()
        #: every transfer socket is read into this one buffer (one thread, and what is not an
        #: ACK is copied out before anything else runs): no 64 KiB allocation per datagram
        self.receive_buffer = bytearray(65536)
        #: every transfer socket is watched by this one epoll, itself watched by the event
        #: loop: one loop callback per batch of ready transfers instead of one per datagram
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _Transfer] = {}

    @property
    def address(self) -> Address:
        assert self._listener is not None, "start() first"
        host, port = self._listener.get_extra_info("sockname")[:2]
        return host, port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(self.config.listen, self.config.port))
        self._family = self._listener.get_extra_info("socket").family
        self._epoll = select.epoll()
        loop.add_reader(self._epoll.fileno(), self._on_transfers_ready)
        _raise_file_limit(3 * self.config.max_transfers + 64)
        log.info("tftp: listening on %s:%d, root %s", *self.address, self.resolver.root)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for transfer in list(self._transfers):
            transfer.abort("server shutting down")
        if self._epoll is not None:
            asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    def active(self) -> int:
        return len(self._transfers)

    # -- transfer sockets ----------------------------------------------------------------

    def watch(self, fd: int, transfer: _Transfer) -> None:
        if self._epoll is None:
            raise OSError("the TFTP server is not running")
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = transfer

    def unwatch(self, fd: int) -> None:
        if self._by_fd.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _on_transfers_ready(self) -> None:
        """The transfer epoll is readable: one datagram from each ready transfer socket.

        Level-triggered like the loop's own selector: a socket with more datagrams waiting
        stays ready and is read again on the next round, so transfers take turns.
        """
        epoll = self._epoll
        if epoll is None:
            return
        try:
            ready = epoll.poll(0, 512)
        except InterruptedError:
            return
        now = asyncio.get_running_loop().time()
        by_fd = self._by_fd
        if len(by_fd) == 1:  # a lone transfer may busy-poll (see _Transfer._busy_poll)
            for fd, _ in ready:
                transfer = by_fd.get(fd)
                if transfer is not None:
                    transfer.on_readable(now)
            return
        for fd, _ in ready:
            transfer = by_fd.get(fd)
            if transfer is not None:
                transfer.receive(now)

    # -- requests on port 69 -------------------------------------------------------------

    def on_request(self, data: bytes, client: Address) -> None:
        self.counters["requests"] += 1
        verdict = screen_request(data)
        if not isinstance(verdict, Accepted):
            self._refuse(client, verdict.reason, verdict.message, verdict.datagram)
            return
        name = "/".join(verdict.path)
        if len(self._transfers) >= self.config.max_transfers:
            self._refuse(client, "busy", f"{name}: {len(self._transfers)} transfers running",
                         error_datagram(ErrorCode.NOT_DEFINED, "server busy, retry later"))
            return
        if self._per_client[client[0]] >= self.config.max_per_client:
            self._refuse(client, "busy_client", f"{name}: too many transfers from {client[0]}",
                         error_datagram(ErrorCode.NOT_DEFINED, "too many transfers, retry later"))
            return
        try:
            source = self.resolver.open(verdict.path, client[0])
        except NotFound as exc:
            self._refuse(client, "not_found", exc.message,
                         error_datagram(ErrorCode.FILE_NOT_FOUND, "file not found"))
            return
        except (ForbiddenPath, OSError, ProvisionerError) as exc:
            message = exc.message if isinstance(exc, ProvisionerError) else str(exc)
            self._refuse(client, getattr(exc, "reason", "forbidden"), message,
                         error_datagram(ErrorCode.ACCESS_VIOLATION, "access violation"))
            return
        now = asyncio.get_running_loop().time()
        session = TftpSession(verdict.request, source, self.config.session, now)
        transfer = _Transfer(self, session, client, name)
        self._transfers.add(transfer)
        self._per_client[client[0]] += 1
        transfer.open(self._family)

    def _refuse(self, client: Address, reason: str, message: str, reply: bytes | None) -> None:
        self.counters[f"rejected:{reason}"] += 1
        log.debug("tftp: %s:%d refused (%s): %s", *client, reason, message)
        if reply is not None and self._listener is not None:
            self._listener.sendto(reply, client)

    def finished(self, transfer: _Transfer, event: Event) -> None:
        self._transfers.discard(transfer)
        self._per_client[transfer.client[0]] -= 1
        if self._per_client[transfer.client[0]] <= 0:
            del self._per_client[transfer.client[0]]
        if isinstance(event, TransferCompleted):
            self.counters["served"] += 1
            self.counters["bytes"] += event.bytes_sent
            log.debug("tftp: %s to %s:%d, %d bytes in %.3fs", transfer.name, *transfer.client,
                      event.bytes_sent, event.duration)
        else:
            self.counters[f"failed:{event.reason}"] += 1
            log.info("tftp: %s to %s:%d failed (%s): %s", transfer.name, *transfer.client,
                     event.reason, event.message)
        self.counters["retransmits"] += event.retransmits
        if self._on_transfer is not None:
            self._on_transfer(TransferRecord(transfer.client, transfer.name, event))


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.on_request(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp: listener socket error: %s", exc)


class _Transfer:
    """One transfer: its own socket (the TID), its session, its timer.

    The transfer socket is a plain non-blocking socket, not an asyncio datagram transport:
    this is the per-block hot path, and the transport's layers (a 256 KiB receive buffer per
    datagram, a protocol callback, checks and buffering in `sendto`) add to what is mostly the
    kernel's work. Nor is it registered with the event loop one by one: the server's own epoll
    watches every transfer socket and the loop watches that epoll, so one loop callback serves
    a whole batch of ready transfers (about 17 per wake-up with 32 busy clients) instead of
    one loop iteration per datagram. Each ready socket gives one datagram; the session's
    `ack_and_send` says what to send, which goes straight to the socket; only when the kernel
    has no room are datagrams queued, in order, for `add_writer`.

    The transfer socket is connect()ed to the client: send/recv without an address to parse
    and check, and the kernel routes once per transfer instead of once per block. A connected
    UDP socket no longer sees other senders, so a second, unconnected socket is bound to the
    same port (SO_REUSEADDR, set on the first socket only after its port-0 bind, so that no
    other transfer can be given that port): the kernel delivers the client's datagrams to the
    connected socket, which matches them better, and everyone else's to the second one, which
    answers ERROR 5 (RFC 1350 section 4) and changes nothing. Two sockets and a file per
    transfer: TftpServer.start lifts the soft RLIMIT_NOFILE toward 3 x max_transfers (at most
    to the hard limit).
    """

    #: datagrams queued while the socket buffer is full; beyond this they are dropped and the
    #: session's retransmit timer recovers them, as for any lost datagram
    MAX_BACKLOG: typing.ClassVar[int] = 1024
    #: how long a lone transfer polls for the client's next datagram (see _busy_poll); 0: never
    BUSY_POLL: typing.ClassVar[float] = 0.0002
    #: how long one wake-up may keep the event loop busy with polling
    INLINE_LIMIT: typing.ClassVar[float] = 0.005
    #: after a poll that waited in vain (a client further away than BUSY_POLL), this many
    #: wake-ups go without polling
    POLL_BACKOFF: typing.ClassVar[int] = 32

    def __init__(self, server: TftpServer, session: TftpSession, client: Address,
                 name: str) -> None:
        self.server = server
        self.session = session
        self.client = client
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None  # connected to the client
        self._stray: socket.socket | None = None  # same port, unconnected: the other senders
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._ended = False
        self._buffer = server.receive_buffer
        self._poll_skip = 0  # wake-ups left without busy polling (see _busy_poll)

    def open(self, family: int) -> None:
        """Two sockets on one ephemeral port: the transfer's, connected to the client, and one
        that gets every other sender's datagrams, to answer them ERROR 5 (see the class)."""
        sock = stray = None
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((self.server.config.listen, 0))  # a port no other socket has
            # Only now: a later bind to this port with SO_REUSEADDR (the stray socket's) is
            # allowed, and no other transfer's port-0 bind (without it) can land here.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stray = socket.socket(family, socket.SOCK_DGRAM)
            stray.setblocking(False)
            stray.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stray.bind(sock.getsockname())
            sock.connect(self.client)
            self.server.watch(sock.fileno(), self)
            self._loop.add_reader(stray.fileno(), self._on_stray)
        except (OSError, ValueError) as exc:
            if sock is not None:
                self.server.unwatch(sock.fileno())
                sock.close()
            if stray is not None:
                with contextlib.suppress(ValueError):
                    self._loop.remove_reader(stray.fileno())
                stray.close()
            self.abort(f"cannot open a transfer socket: {exc}")
            return
        self._sock, self._stray = sock, stray
        self._pump(self._loop.time())

    def _on_stray(self) -> None:
        """A datagram to our port from anyone but the client: ERROR 5 to the sender only."""
        stray = self._stray
        if stray is None:
            return
        try:
            data, addr = stray.recvfrom(65536)
        except OSError:
            return
        if (addr[0], addr[1]) == self.client:  # only before connect() took effect
            if not self._ended:
                now = self._loop.time()
                self.session.receive_datagram(data, now)
                self._pump(now)
            return
        self.server.counters["unknown_tid"] += 1
        with contextlib.suppress(OSError):
            stray.sendto(UNKNOWN_TID, addr)

    def on_readable(self, now: float) -> None:
        # One datagram per wake-up, as the epoll is level-triggered: draining until EAGAIN
        # would cost a failed recv (and an exception) for each ACK of a lock-step transfer,
        # the common case. The datagram is read into the server's buffer (no 64 KiB
        # allocation per ACK); an ACK goes straight to the session's ACK path.
        if self.receive(now) and self.BUSY_POLL > 0 and len(self.server._transfers) == 1:
            if self._poll_skip:
                self._poll_skip -= 1
            else:
                self._busy_poll()

    def receive(self, now: float) -> bool:
        """Read and handle one datagram; False when there was none (or the transfer ended).

        The per-block path: recv_into the shared buffer, the session's `ack_and_send`, send
        what it returns straight to the connected socket, and look at the timer and the
        session's end only through `get_timer` (None once the transfer has ended)."""
        sock = self._sock
        if sock is None or self._ended:
            return False
        buffer = self._buffer
        try:
            size = sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # ICMP errors (the client's port is closed, say); the timer ends the transfer if
            # the client has gone.
            log.debug("tftp: %s to %s:%d: %s", self.name, *self.client, exc)
            return False
        session = self.session
        if size == 4 and buffer[1] == 4 and buffer[0] == 0:  # ACK, the hot path
            out = session.ack_and_send((buffer[2] << 8) | buffer[3], now)
        else:
            session.receive_datagram(bytes(buffer[:size]), now)
            out = session.datagrams_to_send(now)
        if out:
            if len(out) == 1 and not self._backlog:  # lock-step: skip _send's generality
                try:
                    sock.send(out[0])
                except OSError as exc:
                    self._send_failed(out, exc)
            else:
                self._send(out)
        deadline = session.get_timer()
        if deadline is None:
            event = session.next_event()
            if event is not None:
                self._end(event)
            return False
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        return True

    def _busy_poll(self) -> None:
        """A lone transfer polls its socket for the next ACK instead of going back to sleep.

        With one lock-step client every block costs a round trip, and two wake-ups of it are
        the event loop's: the return to epoll and the wake-up of this CPU. Polling the socket
        for up to BUSY_POLL s after each block (in the kernel's busy_poll manner) takes both
        out, for the CPU time of the wait. Bounded: INLINE_LIMIT s per wake-up, then back to
        the loop (requests on port 69 and timers wait at most that long); only while this is
        the server's only transfer; not while datagrams wait for room in the socket buffer;
        and a client slower than BUSY_POLL stops it for POLL_BACKOFF wake-ups. The datagrams
        and their order are the same as without it; only when they are read changes.
        """
        clock = time.monotonic
        limit = clock() + self.INLINE_LIMIT
        receive, transfers, loop_time = self.receive, self.server._transfers, self._loop.time
        while not self._backlog and len(transfers) == 1:
            start = clock()
            if start >= limit:
                return
            give_up = start + self.BUSY_POLL
            while not receive(loop_time()):
                if self._ended:
                    return
                if clock() >= give_up:
                    self._poll_skip = self.POLL_BACKOFF
                    return

    def _send(self, datagrams: list[bytes]) -> None:
        sock = self._sock
        if sock is None or not datagrams:
            return
        if self._backlog:  # keep the order: behind what is already waiting
            self._queue(datagrams)
            return
        client = self.client
        send = sock.send
        for index, datagram in enumerate(datagrams):
            try:
                send(datagram)
            except (BlockingIOError, InterruptedError):
                self._queue(datagrams[index:])
                self._loop.add_writer(sock.fileno(), self._on_writable)
                return
            except OSError as exc:
                # Like a datagram lost on the wire: the session's timer retransmits or gives up.
                log.debug("tftp: %s to %s:%d: send: %s", self.name, *client, exc)

    def _send_failed(self, datagrams: list[bytes], exc: OSError) -> None:
        """`send` of datagrams[0] raised: no room (queue them all) or a real error (lost)."""
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            self._queue(datagrams)
            if self._sock is not None:
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
        else:
            # Like a datagram lost on the wire: the session's timer retransmits or gives up.
            log.debug("tftp: %s to %s:%d: send: %s", self.name, *self.client, exc)
            if len(datagrams) > 1:
                self._send(datagrams[1:])

    def _queue(self, datagrams: list[bytes]) -> None:
        room = self.MAX_BACKLOG - len(self._backlog)
        self._backlog.extend(datagrams[:room])
        if len(datagrams) > room:
            self.server.counters["send_dropped"] += len(datagrams) - room

    def _on_writable(self) -> None:
        sock, backlog = self._sock, self._backlog
        if sock is None:
            return
        while backlog:
            try:
                sock.send(backlog[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("tftp: %s to %s:%d: send: %s", self.name, *self.client, exc)
            backlog.popleft()
        self._loop.remove_writer(sock.fileno())

    def _pump(self, now: float) -> None:
        """Send what the session has, keep a timer armed, and finish on its event."""
        if self._sock is None or self._ended:
            return
        self._send(self.session.datagrams_to_send(now))
        event = self.session.next_event()
        if event is not None:
            self._end(event)
        elif self._timer is None and (deadline := self.session.get_timer()) is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # One armed handle at a time: re-arm for the session's current deadline rather than
        # rescheduling on every ACK, which would cost a heap operation per block.
        self._timer = None
        deadline = self.session.get_timer()
        if deadline is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self.session.handle_timer(now)
        self._pump(now)

    def abort(self, message: str) -> None:
        now = self._loop.time()
        self.session.abort(now, message)
        self._send(self.session.datagrams_to_send(now))
        event = self.session.next_event()
        if event is not None:
            self._end(event)

    def _end(self, event: Event) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        sock = self._sock
        if sock is not None:
            self.server.unwatch(sock.fileno())
            if self._backlog:
                # Last datagrams (the final ERROR, say) get one more try, then go.
                self._loop.remove_writer(sock.fileno())
                for datagram in self._backlog:
                    with contextlib.suppress(OSError):
                        sock.send(datagram)
                self._backlog.clear()
            sock.close()
            self._sock = None
        stray = self._stray
        if stray is not None:
            self._loop.remove_reader(stray.fileno())
            stray.close()
            self._stray = None
        self.server.finished(self, event)


def _raise_file_limit(wanted: int) -> None:
    """Two sockets and a file per transfer: lift the soft descriptor limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
