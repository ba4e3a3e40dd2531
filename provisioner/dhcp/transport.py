"""The receive loop: one server socket as an asyncio DatagramTransport, read in bursts, with
its send queue. Each datagram goes to the server's handler; nothing here knows DHCP.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from provisioner.dhcp.counters import Counters

log = logging.getLogger(__name__)
BURST: Final = 64  # datagrams read per wake-up of the loop
RECV_SIZE: Final = 65536  # over the largest UDP payload: oversized ones arrive whole, are dropped
BACKLOG: Final = 4096  # replies queued while the socket's send buffer is full; more are dropped
COALESCE: Final = 0.002  # s a busy socket rests between reads, so that wake-ups find bursts
COALESCE_BELOW: Final = 32  # a wake-up that found this many packets or more is busy enough

# handler(data, (ip, port), transport, pxe_port, unicast): see DhcpServer.handle.
Handler = Callable[[bytes, tuple[str, int], asyncio.DatagramTransport, bool, bool], None]


class BurstTransport(asyncio.DatagramTransport):
    """One server socket, read in bursts. asyncio's datagram transport reads one datagram per
    wake-up of the loop (an epoll_wait and a callback each); here every wake-up drains up to
    BURST datagrams, so under load the loop's cost is shared by a burst of packets. Replies are
    sent at once; only if the socket buffer is full are they queued until it drains."""

    def __init__(self, sock: socket.socket, handler: Handler, counters: Counters, *,
                 pxe_port: bool, unicast: bool, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._handler = handler
        self._counters = counters
        self._sock = sock
        self._pxe_port = pxe_port
        self._unicast = unicast  # bound to our own address: what arrives was sent to it
        self._loop = loop
        self._backlog: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None  # reading paused by _coalesce, until
        self._last_wakeup = float("-inf")
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock, handle, pxe_port, unicast = (self._sock, self._handler, self._pxe_port,
                                           self._unicast)
        count = 0
        for _ in range(BURST):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("dhcp: socket error: %s", exc)
                break
            count += 1
            try:
                handle(data, (addr[0], addr[1]), self, pxe_port, unicast)
            except Exception:  # one bad packet must not stop the others
                self._counters["errors"] += 1
                log.exception("dhcp: bug while handling a packet")
        self._coalesce(count)

    def _coalesce(self, count: int) -> None:
        """Under a steady stream, wait COALESCE s before reading again, so that the next wake-up
        finds a burst rather than one packet: most of a packet's cost was the wake-up around it
        (epoll, the loop's turn, the failed read that ends the burst); this cut the server's
        CPU per DORA by 9-36% at 3,500 DORA/s (bench/dhcp_results.md), for 1-2 ms more at the
        median. Only when wake-ups already come closer together than COALESCE and find few
        packets each: a lone client's exchange is never delayed."""
        now = self._loop.time()
        recent, self._last_wakeup = now - self._last_wakeup < COALESCE, now
        if recent and 0 < count < COALESCE_BELOW and not self._closed and self._paused is None:
            self._loop.remove_reader(self._sock.fileno())
            self._paused = self._loop.call_later(COALESCE, self._resume)
            self._counters["read_pauses"] += 1

    def _resume(self) -> None:
        self._paused = None
        # The read after a rest counts as following the wake-up before it: a stream that keeps
        # coming keeps the socket resting between reads, not every other one.
        self._last_wakeup = self._loop.time()
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._readable()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closed:
            return
        if not self._backlog:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._writable)
            except OSError as exc:
                log.debug("dhcp: send to %s failed: %s", addr, exc)
                return
        if len(self._backlog) >= BACKLOG:
            self._counters["dropped:send_backlog"] += 1
            return
        self._backlog.append((bytes(data), addr))

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dhcp: send to %s failed: %s", addr, exc)
            self._backlog.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        self._loop.remove_reader(self._sock.fileno())
        if self._backlog:
            self._loop.remove_writer(self._sock.fileno())
            self._backlog.clear()
        self._sock.close()
