"""Log lines about refused requests at a bounded rate: one per source a minute.

A refusal is logged with the requester's address, but a flood from one address must not turn
into a flood of log lines (journald's disk is the appliance's disk too): after the first line,
a source's refusals are counted, and its next line, a minute later at the earliest, says how
many there were meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

EVERY: Final = 60.0  # seconds between two lines about one source
MAX_SOURCES: Final = 4096  # sources remembered; the oldest is forgotten first


class RefusalLog:
    def __init__(self, logger: logging.Logger, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._clock = logger, clock
        self._sources: dict[str, tuple[float, int]] = {}  # source -> (last line, unlogged)
        #: refusals since start
        self.total = 0

    def refused(self, source: str, what: str) -> None:
        """A refused request from `source`; `what` says which and why (no secret in it)."""
        self.total += 1
        now = self._clock()
        last, unlogged = self._sources.get(source, (None, 0))
        if last is not None and now - last < EVERY:
            self._sources[source] = (last, unlogged + 1)
            return
        if last is None and len(self._sources) >= MAX_SOURCES:
            self._sources.pop(next(iter(self._sources)))
        self._sources[source] = (now, 0)
        more = f" ({unlogged} more refused since the last line)" if unlogged else ""
        self._log.warning("refused from %s: %s%s; next line about this source in %d s at the "
                          "earliest", source, what, more, int(EVERY))
