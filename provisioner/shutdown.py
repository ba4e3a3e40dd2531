"""The graceful stop of `provisioner serve`: SIGTERM (systemd's stop) or Ctrl-C.

At the signal, new work is refused at once: the DHCP server stops answering (a node that asks
now tries another server or again later), the boot plane and TFTP stop listening (a new
connection or read request is refused by the kernel) and the API stops accepting. Then the work
under way gets `[service] stop_timeout` seconds (from the signal) to end: TFTP and HTTP
transfers in flight complete, API requests in flight are answered (uvicorn's own graceful
shutdown) and the handoff outbox delivers what it can (handoff/outbox.py `flush`; what it cannot
stays in the store for the next start). Then every part is closed in reverse order and the
process exits 0. A second signal cuts the wait short.

uvicorn's own signal handling is left out (`ApiServer`): it re-raises the signal once the API
has stopped, and the default action of SIGTERM would end the process before the planes and the
store were closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

import uvicorn

from provisioner.boot.server import BootHttpServer
from provisioner.dhcp.server import DhcpServer
from provisioner.handoff.outbox import HandoffQueue
from provisioner.tftp.server import TftpServer

log = logging.getLogger("provisioner")
POLL = 0.1  # seconds between looks at the transfers still under way


class Planes(Protocol):
    """What of the appliance (service.py) takes work, and what holds it."""

    dhcp: DhcpServer | None
    tftp: TftpServer | None
    boot: BootHttpServer | None
    handoff: HandoffQueue | None


class ApiServer(uvicorn.Server):
    """uvicorn's server without its signal handlers (GracefulStop owns the signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class GracefulStop:
    """Owns SIGTERM and SIGINT while the appliance serves; see the module docstring."""

    def __init__(self, planes: Planes, api: uvicorn.Server, timeout: float) -> None:
        self.planes, self.api, self.timeout = planes, api, max(0.0, timeout)
        self.signalled: int | None = None
        self._deadline = 0.0
        self._refusing: asyncio.Task[None] | None = None
        self._cut = asyncio.Event()  # a second signal: stop waiting

    def install(self) -> Callable[[], None]:
        """Handle the signals on the running loop; returns the undo."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

        def undo() -> None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

        return undo

    def _on_signal(self, sig: int) -> None:
        if self.signalled is not None:
            log.warning("%s again: stopping now", signal.Signals(sig).name)
            self.api.force_exit = True
            self._cut.set()
            return
        loop = asyncio.get_running_loop()
        self.signalled, self._deadline = sig, loop.time() + self.timeout
        log.info("%s: refusing new work; %.0f s for the work under way (again to stop now)",
                 signal.Signals(sig).name, self.timeout)
        self.api.should_exit = True
        self._refusing = loop.create_task(self._refuse_new_work(), name="refuse new work")

    async def _refuse_new_work(self) -> None:
        p = self.planes
        if p.boot is not None:
            p.boot.stop_listening()
        if p.tftp is not None:
            await p.tftp.stop_listening()
        if p.dhcp is not None:
            await p.dhcp.close()  # closed again, harmlessly, with the rest

    async def finish(self) -> None:
        """After the API has stopped: wait (up to the deadline) for the work under way."""
        if self._refusing is None:
            return  # not stopped by a signal (the API could not start): nothing to wait for
        await self._refusing
        loop = asyncio.get_running_loop()
        p = self.planes
        waits = [self._transfers()]
        if p.handoff is not None:
            waits.append(self._flush(p.handoff, max(0.0, self._deadline - loop.time())))
        work = loop.create_task(self._all(waits))
        cut = loop.create_task(self._cut_short())
        await asyncio.wait([work, cut], return_when=asyncio.FIRST_COMPLETED)
        for task in (work, cut):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("stopped taking work; closing")

    @staticmethod
    async def _all(waits: list[Coroutine[Any, Any, None]]) -> None:
        await asyncio.gather(*waits)

    async def _cut_short(self) -> None:
        await self._cut.wait()

    async def _transfers(self) -> None:
        loop = asyncio.get_running_loop()
        while self._busy() and loop.time() < self._deadline:
            await asyncio.sleep(POLL)
        if self._busy():
            log.warning("stop: %s still under way after %.0f s; they are cut", self._busy(),
                        self.timeout)

    def _busy(self) -> str:
        p = self.planes
        http = p.boot.open_connections if p.boot is not None else 0
        tftp = p.tftp.active() if p.tftp is not None else 0
        parts = [f"{http} boot-plane connection(s)"] if http else []
        return ", ".join(parts + ([f"{tftp} TFTP transfer(s)"] if tftp else []))

    @staticmethod
    async def _flush(handoff: HandoffQueue, timeout: float) -> None:
        left = await handoff.flush(timeout)
        if left:
            log.warning("stop: %d handoff(s) not delivered yet; they stay queued", left)


async def cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    """End the work requests started in the background (rollouts) while the store is still
    open: a rollout then lets its lock go and the next start resumes it at once."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
