"""One transfer's transport: its sockets (the server's TID), its timer, and its session.

The session (session.py) decides what to send and when; this file only moves its datagrams
between the sockets and the session, keeps one timer armed for the session's deadline, and
ends the transfer (sockets closed, timer cancelled, the server told) on the session's event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
import typing
from typing import Protocol

from provisioner.tftp.poller import TransferPoller
from provisioner.tftp.screening import UNKNOWN_TID
from provisioner.tftp.session import TftpSession
from provisioner.tftp.transitions import Event

__all__ = ["Address", "Transfer", "TransferHost"]

log = logging.getLogger(__name__)

Address = tuple[str, int]


class TransferHost(Protocol):
    """What a transfer needs from its server (TftpServer)."""

    counters: collections.Counter[str]

    def active(self) -> int:
        """Transfers running, this one included."""

    def finished(self, transfer: Transfer, event: Event) -> None:
        """Called once, when the transfer has ended and closed its sockets."""


class Transfer:
    """One transfer: its own socket (the TID), its session, its timer.

    The transfer socket is a plain non-blocking socket, not an asyncio datagram transport:
    this is the per-block hot path, and the transport's layers (a 256 KiB receive buffer per
    datagram, a protocol callback, checks and buffering in `sendto`) add to what is mostly the
    kernel's work. Nor is it registered with the event loop one by one: the server's
    TransferPoller (poller.py) watches every transfer socket with one epoll, and the loop
    watches that epoll, so one loop callback serves a whole batch of ready transfers. Each
    ready socket gives one datagram; the session's `ack_and_send` says what to send, which
    goes straight to the socket; only when the kernel has no room are datagrams queued, in
    order, for `add_writer`.

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

    def __init__(self, server: TransferHost, poller: TransferPoller, session: TftpSession,
                 client: Address, name: str) -> None:
        self.server = server
        self._poller = poller
        self.session = session
        self.client = client
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None  # connected to the client
        self._stray: socket.socket | None = None  # same port, unconnected: the other senders
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._ended = False
        self._buffer = poller.buffer
        self._poll_skip = 0  # wake-ups left without busy polling (see _busy_poll)

    def open(self, family: int, host: str) -> None:
        """Two sockets on one ephemeral port of `host`: the transfer's, connected to the client,
        and one that gets every other sender's datagrams, to answer them ERROR 5 (see the
        class). Ends the transfer at once (ERROR 0 is lost with the socket) if they cannot be
        had."""
        sock = stray = None
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((host, 0))  # a port no other socket has
            # Only now: a later bind to this port with SO_REUSEADDR (the stray socket's) is
            # allowed, and no other transfer's port-0 bind (without it) can land here.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stray = socket.socket(family, socket.SOCK_DGRAM)
            stray.setblocking(False)
            stray.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stray.bind(sock.getsockname())
            sock.connect(self.client)
            self._poller.watch(sock.fileno(), self)
            self._loop.add_reader(stray.fileno(), self._on_stray)
        except (OSError, ValueError) as exc:
            if sock is not None:
                self._poller.unwatch(sock.fileno())
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
        # the common case. The datagram is read into the poller's buffer (no 64 KiB
        # allocation per ACK); an ACK goes straight to the session's ACK path.
        if self.receive(now) and self.BUSY_POLL > 0 and self.server.active() == 1:
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
        receive, active, loop_time = self.receive, self.server.active, self._loop.time
        while not self._backlog and active() == 1:
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
            self._poller.unwatch(sock.fileno())
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
