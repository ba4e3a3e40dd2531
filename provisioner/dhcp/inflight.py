"""The exchanges a DHCP server has in flight: the ones that await the store (a binding before
its ACK, a lease ended, a discovered node, a boot event). Tracked so that closing the server
cancels and awaits every one of them, and so that an exception in one is counted and logged
rather than lost with its task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from provisioner.dhcp.counters import Counters
from provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)


class InFlight:
    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def cancel(self) -> None:
        """Cancel every exchange and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._counters["errors"] += 1
            if isinstance(exc, ProvisionerError):
                log.warning("dhcp: %s", exc)
            else:
                log.error("dhcp: bug while answering", exc_info=exc)
