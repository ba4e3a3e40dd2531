"""The etcd backend's watch: every change under a prefix from a revision on, across etcd restarts.

aetcd's watcher ends with an error when the stream breaks. Here a broken stream is reopened (any
endpoint, doubling backoff up to 2 s) from the revision after the last delivered batch. etcd
never splits one revision's events across responses, so resuming at last+1 neither loses nor
repeats an event. Quiet watches ask for progress notifications, which move the resume point
forward without events, so a watch that saw nothing for hours does not resume from a compacted
revision. A start older than the retained history raises Compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from provisioner.store.base import WatchEvent
from provisioner.store.common import watch_compacted, watch_event
from provisioner.store.etcd.connection import Connection, rpc

log = logging.getLogger(__name__)

WATCH_RETRY_MIN: Final = 0.1  # seconds; a broken watch stream is retried with doubling backoff
WATCH_RETRY_MAX: Final = 2.0

# etcd cancels a watch carrying this metadata when its member loses the raft leader, instead of
# leaving it silently stale on a partitioned member; we then reconnect (possibly elsewhere).
REQUIRE_LEADER: Final = (("hasleader", "true"),)


@dataclass(slots=True)
class _Cursor:
    """Where a watch resumes, kept across its streams."""

    next_rev: int | None
    connected: bool = False  # the current stream was created
    retried: bool = False  # a stream was created before (so a new one is a resume)


class _StreamCancelled(Exception):
    """etcd cancelled a watch for a reason other than compaction; the watch reconnects."""


async def watch(
    connection: Connection, prefix: str, start: int | None
) -> AsyncIterator[WatchEvent]:
    """Changes under `prefix` from revision `start` (None: from the next one), until the
    connection is closed. See the module docstring."""
    # None until the first stream reports the current revision. etcd reads start_revision 0
    # as "now", the contract as "the beginning", hence the max.
    cursor = _Cursor(None if start is None else max(start, 1))
    delay = WATCH_RETRY_MIN
    while not connection.closed:
        try:
            # aclosing: when our consumer stops, the stream is cancelled now, not at GC.
            async with contextlib.aclosing(_stream(connection, prefix, cursor)) as events:
                async for event in events:
                    yield event
            reason = "etcd closed the stream"
        except (rpc.AioRpcError, TimeoutError, StopAsyncIteration, _StreamCancelled) as error:
            reason = await _explain(connection, error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connection.closed and task is not None and not task.cancelling():
                return  # close() cancelled the gRPC call, not the task iterating us
            raise
        if connection.closed:
            return
        if cursor.connected or delay == WATCH_RETRY_MIN:  # once per outage, not per retry
            log.warning(
                "watch on %s lost etcd at %s (%s); reconnecting from revision %s",
                prefix,
                connection.endpoint,
                reason,
                cursor.next_rev,
            )
        if cursor.connected:  # it had worked: start the backoff again
            cursor.connected, delay = False, WATCH_RETRY_MIN
        connection.next_endpoint()
        await asyncio.sleep(delay)
        delay = min(delay * 2, WATCH_RETRY_MAX)


async def _stream(
    connection: Connection, prefix: str, cursor: _Cursor
) -> AsyncGenerator[WatchEvent]:
    """One watch stream from `cursor.next_rev`, advancing the cursor batch by batch."""
    key, end = connection.prefix(prefix)
    conn = await connection.connect()
    create = rpc.WatchRequest(
        create_request=rpc.WatchCreateRequest(
            key=key, range_end=end, start_revision=cursor.next_rev or 0, progress_notify=True
        )
    )
    call = conn.watch.Watch(_hold_open(create), metadata=REQUIRE_LEADER, wait_for_ready=True)
    connection.streams.add(call)
    try:
        responses = call.__aiter__()
        async with asyncio.timeout(connection.timeout):
            created = await anext(responses)
        _check(created, prefix, cursor.next_rev)
        if cursor.next_rev is None:
            cursor.next_rev = int(created.header.revision) + 1
        if cursor.retried:
            log.info("watch on %s resumed from revision %d", prefix, cursor.next_rev)
        cursor.connected, cursor.retried = True, True
        async for response in responses:
            _check(response, prefix, cursor.next_rev)
            if not response.events:  # progress notification: nothing new up to here
                cursor.next_rev = max(cursor.next_rev, int(response.header.revision) + 1)
                continue
            for event in response.events:
                yield _event(connection, event)
            cursor.next_rev = int(response.events[-1].kv.mod_revision) + 1
    finally:
        call.cancel()
        connection.streams.discard(call)


def _check(response: Any, prefix: str, next_rev: int | None) -> None:
    if response.compact_revision:
        raise watch_compacted(prefix, next_rev or 0, int(response.compact_revision))
    if response.canceled:  # e.g. the member lost its leader; retried like a broken stream
        raise _StreamCancelled(response.cancel_reason or "etcd cancelled the watch")


def _event(connection: Connection, event: Any) -> WatchEvent:
    kv = event.kv
    value = None if event.type == rpc.Event.DELETE else kv.value
    return watch_event(connection.name(kv.key), int(kv.mod_revision), value)


async def _hold_open(first: Any) -> AsyncIterator[Any]:
    """The request side of a watch stream: one create request, then stay open (etcd ends a
    watch stream when the client half-closes)."""
    yield first
    await asyncio.Event().wait()


async def _explain(connection: Connection, error: BaseException) -> str:
    """Why the stream broke: a failed TLS check in the words of security.py, else gRPC's.

    With etcd auth the token is forgotten, so the next stream authenticates afresh: a watch
    opened with a token etcd no longer knows (after an etcd restart) is neither refused nor
    answered by etcd 3.4, it just stays silent, so the token cannot be trusted after a break."""
    conn = connection.current()
    if conn is not None and conn.auth is not None:
        conn.auth.forget()
    explained = await connection.diagnose(conn)
    return explained or _describe(error)


def _describe(error: BaseException) -> str:
    if isinstance(error, rpc.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, TimeoutError):
        return "no answer to the watch request in time"
    if isinstance(error, StopAsyncIteration):
        return "stream ended before the watch was created"
    return str(error)
