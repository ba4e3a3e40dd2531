"""Refused requests in the audit log at a bounded rate: a flood of refusals writes a summary,
not one entry each.

The first refusal of an action for one reason from a source is logged (with the requester's
address) and recorded at once; further ones like it within WINDOW seconds are only counted, and
recorded as one summary entry ("refused": N) when the window ends. So a source refused a
thousand times a second costs two audit writes a minute, and the store stays bounded by
retention rather than by the attacker. New sources get their first entry until MAX_FIRSTS
have been written in a window; after that they are counted together under "many sources".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from provisioner.security.audit import AuditLog

log = logging.getLogger(__name__)

WINDOW: Final = 60.0  # seconds one source's refusals are counted before they are recorded
MAX_FIRSTS: Final = 100  # first-refusal entries written per WINDOW, over all sources
MAX_WINDOWS: Final = 4096  # sources counted at once; beyond, they share the "many" window
MANY: Final = "many sources"


@dataclass
class _Window:
    """One source's refusals of one action since `started`: the first as recorded, and how
    many came after it (not recorded yet)."""

    started: float
    who: str
    target: str
    reason: str
    count: int = 0


class RefusalRecorder:
    """Records refusals in `audit` as the module docstring says."""

    def __init__(self, audit: AuditLog, clock: Callable[[], float]) -> None:
        self._audit, self._clock = audit, clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._firsts: list[float] = []  # when each first entry of the last WINDOW was written
        self._flusher: asyncio.Task[None] | None = None
        #: refusals seen since start, recorded or only counted
        self.total = 0

    async def refuse(self, source: str, who: str, action: str, target: str,
                     reason: str) -> None:
        """One refused request from address `source`, by `who` (as the audit log names it)."""
        self.total += 1
        now = self._clock()
        key = (source, action, reason)  # reasons are a few fixed texts: the keys stay few
        if await self._counted(key, now):
            return
        self._firsts = [at for at in self._firsts if now - at < WINDOW]
        if len(self._firsts) >= MAX_FIRSTS or len(self._windows) >= MAX_WINDOWS:
            key = (MANY, action, "")
            if await self._counted(key, now):
                return
            source, who, target = MANY, f"client:{MANY}", "*"
            reason = "too many sources to record each"
        self._firsts.append(now)
        self._windows[key] = _Window(now, who, target, reason)
        log.warning("refused %s %s from %s: %s (more from it within %d s are counted and "
                    "recorded as one entry)", action, target, source, reason, int(WINDOW))
        await self._audit.record(who, action, target, "denied", now,
                                 detail={"reason": reason, "source": source})
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _counted(self, key: tuple[str, str, str], now: float) -> bool:
        """Count a refusal in `key`'s window if it is open; record the window if it ended."""
        window = self._windows.get(key)
        if window is None:
            return False
        if now - window.started < WINDOW:
            window.count += 1
            return True
        del self._windows[key]
        if window.count:
            await self._summarise(key, window, now)
        return False

    async def _flush_later(self) -> None:
        """Record windows as they end, while any is open (then the task ends)."""
        while self._windows:
            await asyncio.sleep(WINDOW / 4)
            await self.flush()

    async def flush(self, *, everything: bool = False) -> None:
        """Record the windows that have ended (all of them with `everything`)."""
        now = self._clock()
        ended = [key for key, w in self._windows.items()
                 if everything or now - w.started >= WINDOW]
        for key in ended:
            window = self._windows.pop(key)
            if window.count:
                await self._summarise(key, window, now)

    async def _summarise(self, key: tuple[str, str, str], window: _Window, now: float) -> None:
        source, action, _ = key
        log.warning("refused %s from %s %d more time(s) in %d s: %s", action, source,
                    window.count, int(now - window.started), window.reason)
        await self._audit.record(f"client:{source}", action, window.target, "denied", now,
                                 detail={"reason": window.reason, "source": source,
                                         "refused": window.count,
                                         "seconds": round(now - window.started)})

    async def close(self) -> None:
        """Record what is counted, and stop the flushing task."""
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush(everything=True)
