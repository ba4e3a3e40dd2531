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
import logging
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
        asyncio.get_running_loop().create_task(transfer.open())

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


class _Transfer(asyncio.DatagramProtocol):
    """One transfer: its own socket (the TID), its session, its timer."""

    def __init__(self, server: TftpServer, session: TftpSession, client: Address,
                 name: str) -> None:
        self.server = server
        self.session = session
        self.client = client
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    async def open(self) -> None:
        try:
            await self._loop.create_datagram_endpoint(
                lambda: self, local_addr=(self.server.config.listen, 0))
        except OSError as exc:
            self.abort(f"cannot open a transfer socket: {exc}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport; it is one.
        self._transport = typing.cast(asyncio.DatagramTransport, transport)
        self._pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.client:
            self.server.counters["unknown_tid"] += 1
            if self._transport is not None:
                self._transport.sendto(UNKNOWN_TID, addr)
            return
        self.session.receive_datagram(data, self._loop.time())
        self._pump()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the client has gone. The timer ends the transfer.
        log.debug("tftp: %s to %s:%d: %s", self.name, *self.client, exc)

    def _pump(self) -> None:
        """Send what the session has, keep a timer armed, and finish on its event."""
        transport = self._transport
        if transport is None or self._ended:
            return
        for datagram in self.session.datagrams_to_send(self._loop.time()):
            transport.sendto(datagram, self.client)
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
        self._pump()

    def abort(self, message: str) -> None:
        self.session.abort(self._loop.time(), message)
        if self._transport is not None:
            for datagram in self.session.datagrams_to_send(self._loop.time()):
                self._transport.sendto(datagram, self.client)
        event = self.session.next_event()
        if event is not None:
            self._end(event)

    def _end(self, event: Event) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
        self.server.finished(self, event)
