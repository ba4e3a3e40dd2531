"""Run the scheduler: its REST app under uvicorn and the dispatcher loop on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from provisioner.errors import ConfigError, ProvisionerError
from provisioner.runtime.supervisor import Supervisor
from provisioner.scheduler.app import create_app
from provisioner.scheduler.state import SchedulerState
from provisioner.store.base import KeyValueStore

log = logging.getLogger("provisioner.scheduler")
START_TIMEOUT = 10.0


class SchedulerServer:
    """The scheduler on `host:port` over `store`: `await start()`, `await stop()`.

    The dispatcher runs when something changed (a submit, a job's end, a resume) and at least
    every `interval` seconds, for walltime ends and silent nodes.
    """

    def __init__(self, store: KeyValueStore, host: str = "127.0.0.1", port: int = 8090, *,
                 interval: float = 1.0, clock: Callable[[], float] = time.time,
                 max_body: int = 1 << 20, node_timeout: float = 300.0,
                 walltime_grace: float = 30.0, token: str = "",
                 retention: JobRetention | None = None) -> None:
        self.store = store
        self.retention = retention or JobRetention()
        self.host = host
        self.port = port
        self.interval = interval
        self.state = SchedulerState(store, clock=clock, node_timeout=node_timeout,
                                    walltime_grace=walltime_grace)
        self.clock = clock
        self.max_body = max_body
        self.token = token
        self._server: uvicorn.Server | None = None
        self._web: asyncio.Task[None] | None = None
        #: owns the dispatcher loop: a fault is logged and the loop restarted (with backoff)
        self.supervisor = Supervisor()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await self.state.load()
        sock = self._bind()
        app = create_app(self.state, max_body=self.max_body, token=self.token)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._web = asyncio.create_task(self._server.serve(sockets=[sock]))
        self.supervisor.spawn("scheduler dispatcher", self._dispatch_loop)
        self.supervisor.spawn("scheduler job retention", self._prune_loop)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if self._web.done() or time.monotonic() > deadline:
                await self.stop()
                raise ConfigError(f"scheduler: the web server did not start on {self.url}")
            await asyncio.sleep(0.01)

    def _bind(self) -> socket.socket:
        """Bind here rather than in uvicorn, which ends the process (sys.exit) when the port is
        taken; port 0 picks a free one, reported in `port`."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is
        # IPPROTO_TCP, and with Nagle on every response waits 40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except (OSError, OverflowError) as exc:
            sock.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"scheduler: cannot listen on {self.host}:{self.port}: {reason}; "
                              "choose another with --port or [scheduler] listen/port") from None
        self.port = sock.getsockname()[1]
        return sock

    async def serve_forever(self) -> None:
        await self.start()
        log.info("scheduler serving on %s (Ctrl-C to stop)", self.url)
        try:
            if self._web is not None:
                await self._web
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        await self.supervisor.close()
        if self._web is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._web
        self._web = None

    async def _dispatch_loop(self) -> None:
        changed = self.state.changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.interval)
            changed.clear()
            try:
                await self.state.dispatch(self.clock())
            except ProvisionerError as exc:  # the store went away: try again next turn
                log.warning("dispatch failed: %s", exc)

    async def _prune_loop(self) -> None:
        """Finished jobs past retention are forgotten at start and every `interval` seconds,
        so the store and the cache follow the settings, not the scheduler's age."""
        keep = self.retention
        while True:
            try:
                forgotten = await self.state.prune(self.clock(), keep=keep.jobs_kept,
                                                   days=keep.jobs_days)
                if forgotten:
                    log.info("retention: forgot %d finished jobs", forgotten)
            except ProvisionerError as exc:
                log.warning("job retention failed, retrying in %gs: %s", keep.interval, exc)
            await asyncio.sleep(keep.interval)


@dataclass(frozen=True)
class JobRetention:
    """How many finished jobs the scheduler keeps: `[scheduler] jobs_kept`, `jobs_days`."""

    jobs_kept: int = 10_000
    jobs_days: float = 30.0
    interval: float = 600.0


def run_scheduler(store: KeyValueStore, host: str, port: int, log_level: str = "INFO", *,
                  interval: float = 1.0, node_timeout: float = 300.0,
                  walltime_grace: float = 30.0, max_body: int = 1 << 20, token: str = "",
                  retention: JobRetention | None = None) -> None:
    logging.basicConfig(level=getattr(logging, log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        server = SchedulerServer(store, host, port, interval=interval, max_body=max_body,
                                 node_timeout=node_timeout, walltime_grace=walltime_grace,
                                 token=token, retention=retention)
        try:
            await server.serve_forever()
        finally:
            await store.close()

    try:
        import uvloop  # measured 1.6-1.9x the requests/s of the default loop (issue 6)
    except ImportError:  # pragma: no cover - a dependency, but the service works without it
        asyncio.run(main())
    else:
        uvloop.run(main())
