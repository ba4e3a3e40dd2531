"""One epoll for every transfer socket, itself watched by the event loop.

With 32 busy clients a loop wake-up finds about 17 transfers ready: one loop callback then
serves the whole batch instead of one loop iteration per datagram. Every transfer socket is
also read into the one buffer kept here (one thread, and what is not an ACK is copied out
before anything else runs): no 64 KiB allocation per datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from typing import Protocol

__all__ = ["Readable", "TransferPoller"]

#: most sockets handled per wake-up; the rest stay ready for the next one
MAX_READY = 512


class Readable(Protocol):
    def receive(self, now: float) -> bool:
        """Read and handle one datagram; False when there was none."""

    def on_readable(self, now: float) -> None:
        """`receive`, and for the only transfer there is, wait for the next datagram a little."""


class TransferPoller:
    def __init__(self) -> None:
        #: every transfer socket is read into this one buffer
        self.buffer = bytearray(65536)
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, Readable] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._epoll is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._loop = loop
        loop.add_reader(self._epoll.fileno(), self._on_ready)

    def close(self) -> None:
        epoll, loop = self._epoll, self._loop
        if epoll is not None and loop is not None:
            loop.remove_reader(epoll.fileno())
            epoll.close()
        self._epoll = None
        self._by_fd.clear()

    def watch(self, fd: int, transfer: Readable) -> None:
        if self._epoll is None:
            raise OSError("the TFTP server is not running")
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = transfer

    def unwatch(self, fd: int) -> None:
        if self._by_fd.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _on_ready(self) -> None:
        """The epoll is readable: one datagram from each ready transfer socket.

        Level-triggered like the loop's own selector: a socket with more datagrams waiting
        stays ready and is read again on the next round, so transfers take turns.
        """
        epoll, loop = self._epoll, self._loop
        if epoll is None or loop is None:
            return
        try:
            ready = epoll.poll(0, MAX_READY)
        except InterruptedError:
            return
        now = loop.time()
        by_fd = self._by_fd
        if len(by_fd) == 1:  # a lone transfer may busy-poll (see Transfer._busy_poll)
            for fd, _ in ready:
                transfer = by_fd.get(fd)
                if transfer is not None:
                    transfer.on_readable(now)
            return
        for fd, _ in ready:
            transfer = by_fd.get(fd)
            if transfer is not None:
                transfer.receive(now)
