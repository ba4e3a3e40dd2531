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
import socket
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
        log.info("tftp: listening on %s:%d, root %s", *self.address, self.resolver.root)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for transfer in list(self._transfers):
            transfer.abort("server shutting down")

    def active(self) -> int:
        return len(self._transfers)

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

    The transfer socket is a plain non-blocking socket watched with `loop.add_reader`, not an
    asyncio datagram transport: this is the per-block hot path, and the transport's layers
    (a 256 KiB receive buffer per datagram, a protocol callback, checks and buffering in
    `sendto`) add to what is mostly the kernel's work. Each wake-up reads one datagram, asks the
    session for what to send and sends it straight to the socket; only when the kernel has no
    room are datagrams queued, in order, for `add_writer`.
    """

    #: datagrams queued while the socket buffer is full; beyond this they are dropped and the
    #: session's retransmit timer recovers them, as for any lost datagram
    MAX_BACKLOG: typing.ClassVar[int] = 1024

    def __init__(self, server: TftpServer, session: TftpSession, client: Address,
                 name: str) -> None:
        self.server = server
        self.session = session
        self.client = client
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._ended = False

    def open(self, family: int) -> None:
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            self.abort(f"cannot open a transfer socket: {exc}")
            return
        try:
            sock.setblocking(False)
            sock.bind((self.server.config.listen, 0))
            self._loop.add_reader(sock.fileno(), self._on_readable)
        except (OSError, ValueError) as exc:
            sock.close()
            self.abort(f"cannot open a transfer socket: {exc}")
            return
        self._sock = sock
        self._pump(self._loop.time())

    def _on_readable(self) -> None:
        # One datagram per wake-up, as the selector is level-triggered: draining until
        # EAGAIN would cost a failed recvfrom (and an exception) for each ACK of a lock-step
        # transfer, the common case.
        sock = self._sock
        if sock is None or self._ended:
            return
        try:
            data, addr = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ICMP errors on an unconnected socket; the timer ends the transfer if the client
            # has gone.
            log.debug("tftp: %s to %s:%d: %s", self.name, *self.client, exc)
            return
        if (addr[0], addr[1]) != self.client:
            self.server.counters["unknown_tid"] += 1
            with contextlib.suppress(OSError):
                sock.sendto(UNKNOWN_TID, addr)
            return
        now = self._loop.time()
        self.session.receive_datagram(data, now)
        self._pump(now)

    def _send(self, datagrams: list[bytes]) -> None:
        sock = self._sock
        if sock is None or not datagrams:
            return
        if self._backlog:  # keep the order: behind what is already waiting
            self._queue(datagrams)
            return
        client = self.client
        for index, datagram in enumerate(datagrams):
            try:
                sock.sendto(datagram, client)
            except (BlockingIOError, InterruptedError):
                self._queue(datagrams[index:])
                self._loop.add_writer(sock.fileno(), self._on_writable)
                return
            except OSError as exc:
                # Like a datagram lost on the wire: the session's timer retransmits or gives up.
                log.debug("tftp: %s to %s:%d: send: %s", self.name, *client, exc)

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
                sock.sendto(backlog[0], self.client)
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
            self._loop.remove_reader(sock.fileno())
            if self._backlog:
                # Last datagrams (the final ERROR, say) get one more try, then go.
                self._loop.remove_writer(sock.fileno())
                for datagram in self._backlog:
                    with contextlib.suppress(OSError):
                        sock.sendto(datagram, self.client)
                self._backlog.clear()
            sock.close()
            self._sock = None
        self.server.finished(self, event)
