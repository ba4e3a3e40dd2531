"""The TFTP server: thin asyncio glue around the sans-IO TftpSession.

Port 69 only receives requests (screening.py decides what to do with each). Each accepted read
request gets its own UDP socket on an ephemeral port, which is the server's transfer ID (RFC
1350 section 4): a Transfer (transfer.py), and the session decides everything else. A datagram
to a transfer socket from any address but the client's gets ERROR 5 and changes nothing. Every
way a transfer ends (done, failed, server shutdown) closes its socket and its file and is
counted.

`counters` (reported by the API under "tftp"):

- requests: datagrams received on port 69, good or not;
- rejected:<reason>: requests refused or dropped, by the token of screening.py (a malformed
  datagram's packet.py reason, write_request, not_a_request, a ForbiddenPath reason), or busy,
  busy_client, not_found, and the reason of a file that could not be opened;
- served, bytes: transfers completed and the file bytes they delivered;
- failed:<reason>: transfers that ended otherwise (timeout, peer_error, malformed, aborted, ...);
- retransmits: datagrams sent again, over all transfers;
- unknown_tid: datagrams to a transfer port from a stranger, answered ERROR 5;
- send_dropped: datagrams dropped because a transfer's send queue was full;
- duplicate_rrq: read requests ignored because the same TID (address and port, RFC 1350
  section 4) already has a transfer of that file: a client that resent its RRQ before our
  first OACK or DATA reached it. That transfer's own timer resends what the client missed; a
  second transfer would take a slot of `max_transfers` (others would get "busy") and time out
  unacknowledged, since the client talks only to the first TID it heard from.

A request over `max_transfers` or `max_per_client` (counted per IP address, whatever its port:
a flood of RRQs from new ports is still one client) is answered ERROR 0 at once, counted as
rejected:busy or rejected:busy_client, and logged with its address at most once per source per
BUSY_LOG_EVERY.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import NotFound, ProvisionerError
from provisioner.limits import OncePer, TftpLimits
from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import ErrorCode
from provisioner.tftp.paths import ForbiddenPath
from provisioner.tftp.poller import TransferPoller
from provisioner.tftp.screening import Accepted, error_datagram, screen_request
from provisioner.tftp.session import TftpSession
from provisioner.tftp.sources import SourceResolver
from provisioner.tftp.transfer import Address, Transfer
from provisioner.tftp.transitions import Event, TransferCompleted

__all__ = ["TftpServer", "TftpServerConfig", "TransferRecord"]

log = logging.getLogger(__name__)
BUSY_LOG_EVERY = 60.0  # s between two log lines about the same refused source
BUSY_LOG_SOURCES = 4096  # sources remembered for that; the oldest are forgotten


@dataclass(frozen=True)
class TftpServerConfig:
    listen: str = "0.0.0.0"
    port: int = 69
    max_transfers: int = TftpLimits.max_transfers  # concurrent transfers in all
    max_per_client: int = TftpLimits.max_per_client  # concurrent transfers from one address
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
        self._transfers: set[Transfer] = set()
        self._per_client: collections.Counter[str] = collections.Counter()
        self._by_tid: dict[Address, Transfer] = {}  # the newest transfer of each client TID
        self._poller = TransferPoller()
        self._busy_log = OncePer(BUSY_LOG_EVERY, limit=BUSY_LOG_SOURCES)

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
        self._poller.start(loop)
        _raise_file_limit(3 * self.config.max_transfers + 64)
        log.info("tftp: listening on %s:%d, root %s", *self.address, self.resolver.root)

    async def close(self) -> None:
        """Stop listening and abort every transfer (ERROR 0 to its client); on return every
        socket of the server is closed, so a new server can bind the port at once."""
        listener = self._listener
        if listener is not None:
            listener.close()
        for transfer in list(self._transfers):
            transfer.abort("server shutting down")
        self._poller.close()
        if listener is not None:
            # The transport closes its socket on a later turn of the loop; wait for it.
            protocol = listener.get_protocol()
            assert isinstance(protocol, _Listener)
            await protocol.closed

    async def stop_listening(self) -> None:
        """Refuse new transfers (a graceful stop): port 69 is closed, those under way go on
        on their own sockets (see `active`); close() ends them."""
        listener, self._listener = self._listener, None
        if listener is not None:
            protocol = listener.get_protocol()
            listener.close()
            assert isinstance(protocol, _Listener)
            await protocol.closed

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
        if self._is_duplicate(client, name):
            return
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
        transfer = Transfer(self, self._poller, session, client, name)
        self._transfers.add(transfer)
        self._by_tid[client] = transfer
        self._per_client[client[0]] += 1
        transfer.open(self._family, self.config.listen)

    def _is_duplicate(self, client: Address, name: str) -> bool:
        """A resent RRQ: this TID already has a transfer of this file (see duplicate_rrq)."""
        running = self._by_tid.get(client)
        if running is None or running.name != name:
            return False
        self.counters["duplicate_rrq"] += 1
        log.debug("tftp: %s:%d resent its request for %s: ignored, its transfer goes on",
                  *client, name)
        return True

    def _refuse(self, client: Address, reason: str, message: str, reply: bytes | None) -> None:
        self.counters[f"rejected:{reason}"] += 1
        now = asyncio.get_running_loop().time()
        if reason.startswith("busy") and self._busy_log.due(client[0], now):
            log.warning("tftp: refused %s:%d (%s): %s (%d busy refusals so far; next line about "
                        "this source in a minute at the earliest)", *client, reason, message,
                        self.counters["rejected:busy"] + self.counters["rejected:busy_client"])
        else:
            log.debug("tftp: %s:%d refused (%s): %s", *client, reason, message)
        if reply is not None and self._listener is not None:
            self._listener.sendto(reply, client)

    # -- the end of a transfer -------------------------------------------------------------

    def finished(self, transfer: Transfer, event: Event) -> None:
        self._transfers.discard(transfer)
        if self._by_tid.get(transfer.client) is transfer:
            del self._by_tid[transfer.client]
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
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.on_request(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp: listener socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _raise_file_limit(wanted: int) -> None:
    """Two sockets and a file per transfer: lift the soft descriptor limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
