"""The etcd v3 backend: the store contract on a real etcd cluster, through aetcd 1.0.

Why aetcd: it is the etcd client that works with current protobuf and grpcio (python-etcd3 0.12
needs protobuf<4, etcd3gw goes through the slower HTTP gateway). We use it for what it does well,
the gRPC channel and the generated etcd stubs and messages, and call the stubs directly: the
contract needs things its convenience methods hide (the response header revision of a
transaction, count-only and paginated ranges, wait-for-ready calls), and two things it lacks
entirely, a watch that survives an etcd restart and a lease keep-alive loop, are written here.
This is the only module that imports aetcd (an import-linter contract says so).

Shape of every call: `async with self._call("put") as conn:` bounds the call by the store's
timeout and maps gRPC failures to our errors in one place (`_call` and `_map_error`), so no other
method has a try/except for the transport. Calls wait for the channel to be ready (gRPC
`wait_for_ready`) rather than failing on the first refused connection, so an etcd restart that
fits inside the timeout is invisible to callers; one that does not gives `StoreUnavailable`
naming the endpoint.

Keys: the optional `namespace` is prepended to every key on the way in and stripped on the way
out, so several test runs or installations can share one etcd without seeing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aetcd
import aetcd.rpc

from provisioner.errors import Conflict, NotFound, StoreError, StoreUnavailable, ValidationError
from provisioner.store.base import (
    Compacted,
    EventType,
    KeyValue,
    RangeResult,
    StoreStatus,
    TxnOp,
    WatchEvent,
    check_expect,
    check_key,
    check_txn,
    conflict_message,
    expect_matches,
    txn_conflict,
)

log = logging.getLogger(__name__)

rpc: Any = aetcd.rpc  # untyped generated protobuf/gRPC code; one name keeps the Any in one place

DEFAULT_PORT: Final = 2379
RANGE_PAGE: Final = 1000  # keys per Range request: bounded messages, each page within the timeout
WATCH_RETRY_MIN: Final = 0.1  # seconds; a broken watch stream is retried with doubling backoff
WATCH_RETRY_MAX: Final = 2.0

# gRPC channel settings. The defaults suit long-lived services talking to flaky WANs; a head node
# talks to etcd on a LAN and must notice a restart quickly.
CHANNEL_OPTIONS: Final[dict[str, int]] = {
    # Reconnect within a second of etcd coming back (gRPC's default backoff grows to 120 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a dead peer on an otherwise quiet watch stream (no RST after a power cut). etcd
    # refuses pings more often than every 5 s (--grpc-keepalive-min-time), so stay above that.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # Range pages are bounded, but one key may hold up to etcd's 1.5 MiB request limit.
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
}

# etcd cancels a watch carrying this metadata when its member loses the raft leader, instead of
# leaving it silently stale on a partitioned member; we then reconnect (possibly elsewhere).
REQUIRE_LEADER: Final = (("hasleader", "true"),)

# gRPC status codes that mean "etcd cannot be reached or cannot serve right now".
_UNAVAILABLE_CODES: Final = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "ABORTED"}
)


@dataclass(slots=True)
class _Conn:
    """One endpoint's gRPC channel and the stubs on it."""

    endpoint: str
    client: Any  # aetcd.Client: owns the channel
    kv: Any
    lease: Any
    watch: Any
    maintenance: Any


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`host`, `host:port`, `http://host:port` or `[v6]:port` -> (host, port)."""
    text = endpoint.strip()
    if text.startswith("https://"):
        raise ValidationError("endpoints", f"{endpoint}: TLS to etcd is not supported yet")
    text = text.removeprefix("http://").rstrip("/")
    if not text:
        raise ValidationError("endpoints", "an etcd endpoint is empty; give host:port")
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:2379 — keep the brackets, gRPC targets need them
        end = text.find("]")
        if end < 0:
            raise ValidationError("endpoints", f"{endpoint}: unbalanced '[' in IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            port = _port(endpoint, rest.removeprefix(":"))
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        port = _port(endpoint, port_text)
    return host, port


def _port(endpoint: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValidationError("endpoints", f"{endpoint}: port must be a number 1-65535")
    return int(text)


def _prefix_end(prefix: bytes) -> bytes:
    """The etcd range_end that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff (or empty): to the end of the keyspace


class EtcdStore:
    """The store contract on etcd v3. See the module docstring."""

    backend = "etcd"

    def __init__(
        self, endpoints: Sequence[str], *, namespace: str = "", timeout: float = 2.0
    ) -> None:
        if isinstance(endpoints, str):  # a lone "host:port" would otherwise be split per char
            endpoints = [endpoints]
        if not endpoints:
            raise ValidationError("endpoints", "give at least one etcd endpoint (host:port)")
        if namespace and (not namespace.startswith("/") or namespace.endswith("/")):
            raise ValidationError(
                "namespace", f"{namespace!r} must start with '/' and not end with '/'"
            )
        if timeout <= 0:
            raise ValidationError("timeout", "must be a positive number of seconds")
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        self._names = [f"{host}:{port}" for host, port in self._endpoints]
        self._namespace = namespace
        self._ns = namespace.encode()
        self._ns_len = len(self._ns)
        self._timeout = timeout
        # Per unary call: a gRPC deadline (so etcd drops work nobody waits for), and wait for the
        # channel to connect instead of failing on the first refused connection.
        self._call_options: dict[str, Any] = {"timeout": timeout, "wait_for_ready": True}
        self._current = 0
        self._conns: dict[int, _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[Any] = set()  # open watch calls, cancelled by close()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._names[self._current]

    # -- the edge: connections, timeouts, error mapping ----------------------------------------

    async def _connection(self) -> _Conn:
        index = self._current
        conn = self._conns.get(index)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreUnavailable("the etcd store was closed; open a new one")
        host, port = self._endpoints[index]
        client = aetcd.Client(host=host, port=port, options=CHANNEL_OPTIONS)
        await client.connect()  # creates the channel and stubs; no network round trip yet
        conn = self._conns.get(index)  # another task may have won the race meanwhile
        if conn is not None:
            await client.close()
            return conn
        channel = client.channel
        conn = _Conn(
            endpoint=self._names[index],
            client=client,
            kv=client.kvstub,
            lease=client.leasestub,
            watch=rpc.WatchStub(channel),
            maintenance=client.maintenancestub,
        )
        self._conns[index] = conn
        return conn

    @contextlib.asynccontextmanager
    async def _call(self, what: str, *, lease: int = 0) -> AsyncIterator[_Conn]:
        """Bound one call by the timeout and translate transport failures (the only place)."""
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._connection()
                yield conn
        except TimeoutError:
            raise self._unavailable(conn, what, f"no answer within {self._timeout:g} s") from None
        except rpc.AioRpcError as error:
            raise self._map_error(error, conn, what, lease) from error

    def _map_error(self, error: Any, conn: _Conn | None, what: str, lease: int) -> StoreError:
        code = error.code().name
        details = str(error.details() or code)
        if code in _UNAVAILABLE_CODES:
            return self._unavailable(conn, what, details)
        if code == "NOT_FOUND" and "lease" in details:
            return NotFound(f"lease {lease} has expired or was revoked; grant a new one")
        if code == "OUT_OF_RANGE" and "compacted" in details:
            return Compacted(f"{what}: {details}; read again with range() and watch from there")
        if code == "RESOURCE_EXHAUSTED" and "space" in details:
            return StoreError(
                f"etcd at {self._where(conn)} is out of space ({details}): compact and defragment "
                "it, then disarm the NOSPACE alarm (`etcdctl alarm disarm`)"
            )
        return StoreError(f"etcd at {self._where(conn)} refused {what}: {details}")

    def _unavailable(self, conn: _Conn | None, what: str, reason: str) -> StoreUnavailable:
        where = self._where(conn)
        if conn is not None:
            state = conn.client.channel.get_state(try_to_connect=False)
            if state.name == "TRANSIENT_FAILURE":
                reason = f"{reason}; cannot connect"
            self._fail_over(conn)
        return StoreUnavailable(
            f"etcd at {where} is unavailable for {what} ({reason}); check that etcd is running "
            "and reachable from this host (`provisioner store status`)"
        )

    def _where(self, conn: _Conn | None) -> str:
        return conn.endpoint if conn is not None else self.endpoint

    def _fail_over(self, conn: _Conn) -> None:
        """Send the next calls to the next endpoint (the failed call is not retried)."""
        if len(self._endpoints) > 1 and self._conns.get(self._current) is conn:
            self._current = (self._current + 1) % len(self._endpoints)
            log.warning("etcd at %s failed; switching to %s", conn.endpoint, self.endpoint)

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._ns + check_key(key).encode()

    def _prefix(self, prefix: str) -> tuple[bytes, bytes]:
        # Every key starts with "/", so an empty prefix means "/": with a namespace that also
        # keeps "/ns" from matching a neighbour "/ns2/...".
        start = self._ns + (prefix or "/").encode()
        return start, _prefix_end(start)

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            kv.key[self._ns_len :].decode(),
            kv.value,
            kv.create_revision,
            kv.mod_revision,
            kv.lease,
        )

    @staticmethod
    def _compare(key: bytes, expect: int) -> Any:
        if expect == 0:  # absent: etcd compares a missing key as create_revision 0
            return rpc.Compare(
                key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
            )
        return rpc.Compare(
            key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expect
        )

    def _txn(self, key: bytes, expect: int, op: Any) -> Any:
        """`op` if the key is as expected, else read it, so a Conflict can say what it found."""
        return rpc.TxnRequest(
            compare=[self._compare(key, expect)],
            success=[op],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )

    def _conflict(self, key: str, response: Any, expect: int) -> Conflict:
        kvs = response.responses[0].response_range.kvs
        return Conflict(conflict_message(key, self._kv(kvs[0]) if kvs else None, expect))

    # -- the contract -------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        request = rpc.RangeRequest(key=self._key(key))
        async with self._call("get") as conn:
            response = await conn.kv.Range(request, **self._call_options)
        return self._kv(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str) -> RangeResult:
        start, end = self._prefix(prefix)
        items: list[KeyValue] = []
        revision = 0  # 0: latest; later pages read at the first page's revision (one snapshot)
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=RANGE_PAGE, revision=revision
            )
            async with self._call("range") as conn:
                response = await conn.kv.Range(request, **self._call_options)
            revision = revision or response.header.revision
            items.extend(self._kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return RangeResult(items, int(revision))
            start = response.kvs[-1].key + b"\0"

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_expect(expect)
        raw = self._key(key)
        request = rpc.PutRequest(key=raw, value=value, lease=lease)
        if expect is None:
            async with self._call("put", lease=lease) as conn:
                response = await conn.kv.Put(request, **self._call_options)
            return int(response.header.revision)
        txn = self._txn(raw, expect, rpc.RequestOp(request_put=request))
        async with self._call("put", lease=lease) as conn:
            response = await conn.kv.Txn(txn, **self._call_options)
        if not response.succeeded:
            raise self._conflict(key, response, expect)
        return int(response.header.revision)

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_expect(expect)
        raw = self._key(key)
        request = rpc.DeleteRangeRequest(key=raw)
        if expect is None:
            async with self._call("delete") as conn:
                response = await conn.kv.DeleteRange(request, **self._call_options)
            if not response.deleted:
                raise NotFound(f"{key} does not exist")
            return int(response.header.revision)
        # expect=0 on an absent key succeeds and deletes nothing: the revision does not move.
        txn = self._txn(raw, expect, rpc.RequestOp(request_delete_range=request))
        async with self._call("delete") as conn:
            response = await conn.kv.Txn(txn, **self._call_options)
        if not response.succeeded:
            raise self._conflict(key, response, expect)
        return int(response.header.revision)

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        """One etcd Txn: a compare per op with an `expect`, all the writes on success, and on
        failure a read of every compared key so the conflict can name the one that moved."""
        check_txn(ops)
        keys = [self._key(op.key) for op in ops]
        checked = [(op, key, op.expect) for op, key in zip(ops, keys, strict=True)
                   if op.expect is not None]
        request = rpc.TxnRequest(
            compare=[self._compare(key, expect) for _, key, expect in checked],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                     if op.value is None else
                     rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.value))
                     for op, key in zip(ops, keys, strict=True)],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
                     for _, key, _ in checked],
        )
        async with self._call("txn") as conn:
            response = await conn.kv.Txn(request, **self._call_options)
        if not response.succeeded:
            found = [(op.key, self._kv(a.response_range.kvs[0]) if a.response_range.kvs
                      else None, expect)
                     for (op, _, expect), a in zip(checked, response.responses, strict=True)]
            failed = [f for f in found if not expect_matches(f[1], f[2])]
            raise txn_conflict(failed or found)
        return [int(response.header.revision)] * len(ops)

    async def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from revision `start`, across etcd restarts.

        aetcd's watcher ends with an error when the stream breaks. Here a broken stream is
        reopened (any endpoint, doubling backoff up to 2 s) from the revision after the last
        delivered batch. etcd never splits one revision's events across responses, so resuming
        at last+1 neither loses nor repeats an event. Quiet watches ask for progress
        notifications, which move the resume point forward without events, so a watch that saw
        nothing for hours does not resume from a compacted revision. A start older than the
        retained history raises Compacted.
        """
        # None until the first stream reports the current revision. etcd reads start_revision 0
        # as "now", the contract as "the beginning", hence the max.
        cursor = _Cursor(None if start is None else max(start, 1))
        delay = WATCH_RETRY_MIN
        while not self._closed:
            try:
                # aclosing: when our consumer stops, the stream is cancelled now, not at GC.
                async with contextlib.aclosing(self._watch_stream(prefix, cursor)) as events:
                    async for event in events:
                        yield event
                reason = "etcd closed the stream"
            except (rpc.AioRpcError, TimeoutError, StopAsyncIteration, _StreamCancelled) as error:
                reason = _describe(error)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    return  # close() cancelled the gRPC call, not the task iterating us
                raise
            if self._closed:
                return
            if cursor.connected or delay == WATCH_RETRY_MIN:  # once per outage, not per retry
                log.warning(
                    "watch on %s lost etcd at %s (%s); reconnecting from revision %s",
                    prefix,
                    self.endpoint,
                    reason,
                    cursor.next_rev,
                )
            if cursor.connected:  # it had worked: start the backoff again
                cursor.connected, delay = False, WATCH_RETRY_MIN
            conn = self._conns.get(self._current)
            if conn is not None:
                self._fail_over(conn)  # with several endpoints, try the next one
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)

    async def _watch_stream(self, prefix: str, cursor: _Cursor) -> AsyncGenerator[WatchEvent]:
        """One watch stream from `cursor.next_rev`, advancing the cursor batch by batch."""
        key, end = self._prefix(prefix)
        conn = await self._connection()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key, range_end=end, start_revision=cursor.next_rev or 0, progress_notify=True
            )
        )
        call = conn.watch.Watch(_hold_open(create), metadata=REQUIRE_LEADER, wait_for_ready=True)
        self._streams.add(call)
        try:
            responses = call.__aiter__()
            async with asyncio.timeout(self._timeout):
                created = await anext(responses)
            self._check_watch_response(created, prefix, cursor.next_rev)
            if cursor.next_rev is None:
                cursor.next_rev = int(created.header.revision) + 1
            if cursor.retried:
                log.info("watch on %s resumed from revision %d", prefix, cursor.next_rev)
            cursor.connected, cursor.retried = True, True
            async for response in responses:
                self._check_watch_response(response, prefix, cursor.next_rev)
                if not response.events:  # progress notification: nothing new up to here
                    cursor.next_rev = max(cursor.next_rev, int(response.header.revision) + 1)
                    continue
                for event in response.events:
                    yield self._event(event)
                cursor.next_rev = int(response.events[-1].kv.mod_revision) + 1
        finally:
            call.cancel()
            self._streams.discard(call)

    @staticmethod
    def _check_watch_response(response: Any, prefix: str, next_rev: int | None) -> None:
        if response.compact_revision:
            raise Compacted(
                f"watch on {prefix} from revision {next_rev}: history before revision "
                f"{response.compact_revision} was compacted; read again with range() and watch "
                "from its revision + 1"
            )
        if response.canceled:  # e.g. the member lost its leader; retried like a broken stream
            raise _StreamCancelled(response.cancel_reason or "etcd cancelled the watch")

    def _event(self, event: Any) -> WatchEvent:
        kv = event.kv
        key = kv.key[self._ns_len :].decode()
        if event.type == rpc.Event.DELETE:
            return WatchEvent(EventType.DELETE, key, b"", int(kv.mod_revision))
        return WatchEvent(EventType.PUT, key, kv.value, int(kv.mod_revision))

    # -- leases -------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        """A lease of `ttl` seconds, rounded up to whole seconds and to etcd's minimum TTL
        (1.5 election timeouts: 2 s with etcd's defaults)."""
        if ttl <= 0:
            raise ValidationError("ttl", "must be a positive number of seconds")
        request = rpc.LeaseGrantRequest(TTL=math.ceil(ttl))
        async with self._call("lease grant") as conn:
            response = await conn.lease.LeaseGrant(request, **self._call_options)
        if response.error:
            raise StoreError(f"etcd at {conn.endpoint} refused a lease: {response.error}")
        return int(response.ID)

    async def keepalive(self, lease: int) -> None:
        """Renew `lease` once. NotFound if it has already expired or was revoked."""
        async with self._call("lease keepalive", lease=lease) as conn:
            # LeaseKeepAlive is a stream; send one request and read its one answer.
            call = conn.lease.LeaseKeepAlive(
                [rpc.LeaseKeepAliveRequest(ID=lease)], **self._call_options
            )
            try:
                response = await call.read()
            finally:
                call.cancel()
        if not isinstance(response, rpc.LeaseKeepAliveResponse) or response.TTL <= 0:
            # etcd answers an unknown lease with TTL 0 rather than an error.
            raise NotFound(f"lease {lease} has expired or was revoked; grant a new one")

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting its keys. Revoking a lease that is already gone is fine."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        with contextlib.suppress(NotFound):
            async with self._call("lease revoke", lease=lease) as conn:
                await conn.lease.LeaseRevoke(request, **self._call_options)

    def keep_alive_forever(self, lease: int, ttl: float) -> asyncio.Task[None]:
        """Renew `lease` every ttl/3 in the background until the task is cancelled or close().

        aetcd has no keep-alive loop. While etcd is unreachable it retries every ttl/10 (the
        lease survives if etcd comes back within its TTL); if the lease is gone (NotFound) the
        task ends with that error, so its owner can notice and grant a new one.
        """
        task = asyncio.create_task(self._keep_alive(lease, ttl), name=f"etcd-lease-{lease}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep_alive(self, lease: int, ttl: float) -> None:
        interval = max(ttl / 3, 0.1)
        while True:
            try:
                await self.keepalive(lease)
            except StoreUnavailable as error:
                log.warning("lease %d not renewed, retrying: %s", lease, error)
                await asyncio.sleep(max(ttl / 10, 0.1))
                continue
            except NotFound:
                log.error("lease %d expired before it was renewed", lease)
                raise
            await asyncio.sleep(interval)

    # -- administration -----------------------------------------------------------------------

    async def status(self) -> StoreStatus:
        start, end = self._prefix("")
        count = rpc.RangeRequest(key=start, range_end=end, count_only=True)
        async with self._call("status") as conn:
            member = await conn.maintenance.Status(rpc.StatusRequest(), **self._call_options)
            keys = await conn.kv.Range(count, **self._call_options)
        return StoreStatus(
            self.backend,
            conn.endpoint,
            int(keys.header.revision),
            int(keys.count),
            f"etcd {member.version}, leader {member.leader:x}, raft term {member.raftTerm}, "
            f"db {member.dbSize / 1e6:.1f} MB, namespace {self._namespace or '/'}, "
            f"{len(self._endpoints)} endpoint(s)",
        )

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Drop history before `revision` (store-wide, not just this namespace).

        `physical` waits until etcd has removed it from its database. Compacting to a revision
        that is already compacted is a no-op.
        """
        request = rpc.CompactionRequest(revision=revision, physical=physical)
        try:
            async with self._call("compact") as conn:
                await conn.kv.Compact(request, **self._call_options)
        except Compacted:
            return
        except StoreError as error:
            if "future revision" in str(error):
                raise ValidationError("revision", f"{revision} is newer than the store") from None
            raise

    async def close(self) -> None:
        """Stop keep-alive tasks and watches, then close the channels. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for call in list(self._streams):
            call.cancel()
        self._streams.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.client.close()


@dataclass(slots=True)
class _Cursor:
    """Where a watch resumes, kept across its streams."""

    next_rev: int | None
    connected: bool = False  # the current stream was created
    retried: bool = False  # a stream was created before (so a new one is a resume)


class _StreamCancelled(Exception):
    """etcd cancelled a watch for a reason other than compaction; the watch reconnects."""


async def _hold_open(first: Any) -> AsyncIterator[Any]:
    """The request side of a watch stream: one create request, then stay open (etcd ends a
    watch stream when the client half-closes)."""
    yield first
    await asyncio.Event().wait()


def _describe(error: BaseException) -> str:
    if isinstance(error, rpc.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, TimeoutError):
        return "no answer to the watch request in time"
    if isinstance(error, StopAsyncIteration):
        return "stream ended before the watch was created"
    return str(error)
