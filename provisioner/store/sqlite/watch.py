"""The sqlite store's watch: the `log` table read forward from a revision.

A commit in this process wakes its watchers at once (`Changes`); other processes' commits are
seen within POLL seconds, by an indexed read of the log from the next revision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from provisioner.store.base import WatchEvent
from provisioner.store.common import (
    Changes,
    first_revision,
    prefix_end,
    watch_compacted,
    watch_event,
)
from provisioner.store.sqlite.schema import Reader

POLL = 0.05  # seconds between checks for other processes' commits
WATCH_BATCH = 1000  # most log rows one watch reads at a time


async def follow_log(
    reader: Reader, changes: Changes, prefix: str, start: int | None
) -> AsyncIterator[WatchEvent]:
    """Changes under `prefix` from revision `start` (None: from the next one), until the store
    is closed."""
    if changes.closed:
        return
    compacted, revision = reader.meta()
    next_rev = first_revision(start, revision)
    if next_rev <= compacted:
        raise watch_compacted(prefix, next_rev, compacted + 1)
    end = prefix_end(prefix)
    while not changes.closed:
        ticket = changes.ticket()
        # The prefix is matched by sqlite, between next_rev and the newest revision read
        # first: a watch on nodes/ then never fetches (or wakes Python for) the rows of a
        # DHCP server's lease writes, and next_rev still moves past them.
        head = reader.read("SELECT max(rev) FROM log")[0][0] or 0
        if head >= next_rev:
            rows = reader.read(
                "SELECT rev, key, value, deleted FROM log WHERE rev BETWEEN ? AND ? "
                "AND key >= ? AND key < ? ORDER BY rev LIMIT ?",
                (next_rev, head, prefix, end, WATCH_BATCH))
            for rev, key, value, deleted in rows:
                yield watch_event(key, rev, None if deleted else value)
            next_rev = rows[-1][0] + 1 if len(rows) == WATCH_BATCH else head + 1
        else:
            # Our own commits wake us at once; another process's are seen at the next poll.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await ticket.wait()
