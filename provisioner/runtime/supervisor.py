"""One owner for every long-running background task: restarts what fails, says what is down.

A head node runs for months. A bare asyncio task that raises ends silently: the inventory view
freezes or the sweeper stops, and nothing says so. Each task here is registered by name with a
coroutine factory; an unexpected exception is logged with its traceback and the task is
started again after a capped exponential backoff (reset once it has run fine for
`healthy_after` seconds). `states()` says which task is running, which is restarting (since
when, after how many restarts, the last error), for /healthz.

A task that returns has finished (a watch ends when its store is closed): it is not restarted.

The followers sit deep inside the inventory cache and the DHCP lease book; rather than thread a
runtime concern through those domain objects, the supervisor the process runs under is ambient
(`current()`, a context variable that tasks created afterwards inherit). Parts started without
one supervise their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, object]]

#: the supervisor of the running service, if any (see the module docstring)
_current: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "provisioner_supervisor", default=None)


def current() -> Supervisor | None:
    return _current.get()


def install(supervisor: Supervisor) -> Callable[[], None]:
    """Make `supervisor` the ambient one for this task and those it creates; returns the undo."""
    token = _current.set(supervisor)

    def undo() -> None:
        # A test may stop the service from another task than the one that started it.
        with contextlib.suppress(ValueError):
            _current.reset(token)

    return undo


def ambient() -> Supervisor:
    """The ambient supervisor, else a private one for a part started on its own."""
    return current() or Supervisor()


class TaskStatus(enum.StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # failed; waiting out its backoff before the next start
    FINISHED = "finished"  # returned, or stopped: not restarted


@dataclass(frozen=True, slots=True)
class TaskState:
    """What /healthz shows of one task. `since` is when it entered `status` (wall clock)."""

    name: str
    status: TaskStatus
    since: float
    restarts: int
    last_error: str

    @property
    def down(self) -> bool:
        return self.status is TaskStatus.RESTARTING


class Supervised:
    """One registered task: its state, and `stop()`."""

    def __init__(self, supervisor: Supervisor, name: str, factory: TaskFactory) -> None:
        self.name, self.factory = name, factory
        self._supervisor = supervisor
        self.status = TaskStatus.RUNNING
        self.since = supervisor.clock()
        self.restarts = 0
        self.last_error = ""
        self.task: asyncio.Task[None] | None = None

    def state(self) -> TaskState:
        return TaskState(self.name, self.status, self.since, self.restarts, self.last_error)

    def enter(self, status: TaskStatus) -> None:
        if status is not self.status:
            self.status, self.since = status, self._supervisor.clock()

    async def stop(self) -> None:
        await self._supervisor.stop(self)


class Supervisor:
    """Owns named background tasks (see the module docstring). Delays are in seconds."""

    def __init__(self, *, first_delay: float = 0.1, max_delay: float = 30.0,
                 healthy_after: float = 60.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.first_delay, self.max_delay = first_delay, max_delay
        self.healthy_after = healthy_after
        self.clock, self.monotonic = clock, monotonic
        self._tasks: dict[str, Supervised] = {}

    def spawn(self, name: str, factory: TaskFactory) -> Supervised:
        """Start `factory()` as task `name` (made unique with a suffix if already taken)."""
        unique, n = name, 1
        while unique in self._tasks:
            n += 1
            unique = f"{name} ({n})"
        entry = Supervised(self, unique, factory)
        self._tasks[unique] = entry
        entry.task = asyncio.get_running_loop().create_task(self._run(entry), name=unique)
        return entry

    async def stop(self, entry: Supervised) -> None:
        """Cancel one task and wait for it; it leaves the table."""
        self._tasks.pop(entry.name, None)
        entry.enter(TaskStatus.FINISHED)
        if entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task

    async def close(self) -> None:
        for entry in list(self._tasks.values()):
            await self.stop(entry)

    def states(self) -> list[TaskState]:
        return [entry.state() for entry in self._tasks.values()]

    def down(self) -> list[TaskState]:
        return [state for state in self.states() if state.down]

    async def _run(self, entry: Supervised) -> None:
        delay = self.first_delay
        while True:
            started = self.monotonic()
            entry.enter(TaskStatus.RUNNING)
            try:
                await entry.factory()
            except Exception as exc:  # the point: nothing ends a task silently
                if self.monotonic() - started >= self.healthy_after:
                    delay = self.first_delay  # it ran fine for a while: a fresh fault
                entry.restarts += 1
                entry.last_error = f"{type(exc).__name__}: {exc}"
                entry.enter(TaskStatus.RESTARTING)
                log.error("task %s failed (restart %d in %.1f s)", entry.name, entry.restarts,
                          delay, exc_info=exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            else:
                log.info("task %s finished", entry.name)
                entry.enter(TaskStatus.FINISHED)
                return
