"""EtcdStore: the store contract's operations on etcd v3 (keys, txns, leases, administration).

The channels, timeouts and error mapping are in connection.py and the watch in watch.py; this
module turns each contract operation into etcd requests. See the package docstring for why the
stubs are called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from provisioner.errors import Conflict, NotFound, StoreError, StoreUnavailable, ValidationError
from provisioner.store.base import Compacted, KeyValue, RangeResult, StoreStatus, TxnOp, WatchEvent
from provisioner.store.common import (
    check_expect,
    check_page,
    check_txn,
    conflict_message,
    lease_gone,
    missing,
    txn_conflict,
    txn_refusal,
)
from provisioner.store.etcd import watch as _watch
from provisioner.store.etcd.connection import Connection, rpc
from provisioner.store.etcd.security import EtcdSecurity

log = logging.getLogger(__name__)

RANGE_PAGE: Final = 1000  # keys per Range request: bounded messages, each page within the timeout


class EtcdStore:
    """The store contract on etcd v3. See the package docstring."""

    backend = "etcd"

    def __init__(
        self, endpoints: Sequence[str], *, namespace: str = "", timeout: float = 2.0,
        security: EtcdSecurity | None = None,
    ) -> None:
        """`security`: TLS and auth for every channel (security.py); None: plain, no auth."""
        self._etcd = Connection(endpoints, namespace=namespace, timeout=timeout,
                                security=security)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._etcd.endpoint

    # -- compare-and-swap requests ------------------------------------------------------------

    @staticmethod
    def _compare(key: bytes, expect: int) -> Any:
        if expect == 0:  # absent: etcd compares a missing key as create_revision 0
            return rpc.Compare(
                key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
            )
        return rpc.Compare(
            key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=expect
        )

    async def _cas(self, what: str, key: str, expect: int, op: Any, lease: int = 0) -> int:
        """`op` in a Txn if `key` is as `expect`ed; else the Txn reads the key, so the
        Conflict can say what it found. The new revision."""
        raw = self._etcd.key(key)
        request = rpc.TxnRequest(
            compare=[self._compare(raw, expect)],
            success=[op],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
        )
        async with self._etcd.call(what, lease=lease) as conn:
            response = await conn.kv.Txn(request, **self._etcd.options)
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            raise Conflict(conflict_message(key, self._etcd.kv(kvs[0]) if kvs else None, expect))
        return int(response.header.revision)

    # -- the contract -------------------------------------------------------------------------

    async def _read(self, what: str, request: Any) -> Any:
        """One Range, tried once on each endpoint in turn while they are unavailable: a read is
        safe to repeat, and a process that makes one call (the CLI) must not fail because the
        first endpoint listed is the member that is down. Writes are not retried here."""
        for attempt in range(len(self._etcd.endpoints)):
            try:
                async with self._etcd.call(what) as conn:
                    return await conn.kv.Range(request, **self._etcd.options)
            except StoreUnavailable:
                if attempt == len(self._etcd.endpoints) - 1:
                    raise
        raise AssertionError("unreachable: at least one endpoint")  # pragma: no cover

    async def get(self, key: str) -> KeyValue | None:
        request = rpc.RangeRequest(key=self._etcd.key(key))
        response = await self._read("get", request)
        return self._etcd.kv(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str) -> RangeResult:
        start, end = self._etcd.prefix(prefix)
        items: list[KeyValue] = []
        revision = 0  # 0: latest; later pages read at the first page's revision (one snapshot)
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=RANGE_PAGE, revision=revision
            )
            response = await self._read("range", request)
            revision = revision or response.header.revision
            items.extend(self._etcd.kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return RangeResult(items, int(revision))
            start = response.kvs[-1].key + b"\0"

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        check_page(prefix, after, limit)
        start, end = self._etcd.prefix(prefix)
        if after and reverse:
            end = self._etcd.key(after)  # range_end is exclusive
        elif after:
            start = self._etcd.key(after) + b"\0"  # the smallest key past `after`
        request = rpc.RangeRequest(
            key=start, range_end=end, limit=limit, sort_target=rpc.RangeRequest.KEY,
            sort_order=rpc.RangeRequest.DESCEND if reverse else rpc.RangeRequest.ASCEND)
        response = await self._read("range", request)
        return RangeResult([self._etcd.kv(kv) for kv in response.kvs],
                           int(response.header.revision))

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_expect(expect)
        raw = self._etcd.key(key)
        request = rpc.PutRequest(key=raw, value=value, lease=lease)
        if expect is None:
            async with self._etcd.call("put", lease=lease) as conn:
                response = await conn.kv.Put(request, **self._etcd.options)
            return int(response.header.revision)
        return await self._cas("put", key, expect, rpc.RequestOp(request_put=request), lease)

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_expect(expect)
        raw = self._etcd.key(key)
        request = rpc.DeleteRangeRequest(key=raw)
        if expect is None:
            async with self._etcd.call("delete") as conn:
                response = await conn.kv.DeleteRange(request, **self._etcd.options)
            if not response.deleted:
                raise missing(key)
            return int(response.header.revision)
        # expect=0 on an absent key succeeds and deletes nothing: the revision does not move.
        return await self._cas("delete", key, expect, rpc.RequestOp(request_delete_range=request))

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        """One etcd Txn: a compare per op with an `expect`, all the writes on success, and on
        failure a read of every compared key so the conflict can name the one that moved."""
        check_txn(ops)
        keys = [self._etcd.key(op.key) for op in ops]
        checked = [(op, key) for op, key in zip(ops, keys, strict=True) if op.expect is not None]
        request = rpc.TxnRequest(
            compare=[self._compare(key, op.expect or 0) for op, key in checked],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                     if op.value is None else
                     rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.value))
                     for op, key in zip(ops, keys, strict=True) if not op.compare_only],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key)) for _, key in checked],
        )
        async with self._etcd.call("txn") as conn:
            response = await conn.kv.Txn(request, **self._etcd.options)
        if not response.succeeded:
            compared = [op for op, _ in checked]
            found = [self._etcd.kv(a.response_range.kvs[0]) if a.response_range.kvs else None
                     for a in response.responses]
            # (Every read is at the failed compare's revision, so one of them fails again.)
            raise txn_refusal(compared, found) or txn_conflict(
                [(op.key, kv, op.expect) for op, kv in zip(compared, found, strict=True)])
        return [int(response.header.revision)] * len(ops)

    def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from revision `start`, across etcd restarts (watch.py)."""
        return _watch.watch(self._etcd, prefix, start)

    # -- leases -------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        """A lease of `ttl` seconds, rounded up to whole seconds and to etcd's minimum TTL
        (1.5 election timeouts: 2 s with etcd's defaults)."""
        if ttl <= 0:
            raise ValidationError("ttl", "must be a positive number of seconds")
        request = rpc.LeaseGrantRequest(TTL=math.ceil(ttl))
        async with self._etcd.call("lease grant") as conn:
            response = await conn.lease.LeaseGrant(request, **self._etcd.options)
        if response.error:
            raise StoreError(f"etcd at {conn.endpoint} refused a lease: {response.error}")
        return int(response.ID)

    async def keepalive(self, lease: int) -> None:
        """Renew `lease` once. NotFound if it has already expired or was revoked."""
        async with self._etcd.call("lease keepalive", lease=lease) as conn:
            # LeaseKeepAlive is a stream; send one request and read its one answer.
            call = conn.lease.LeaseKeepAlive(
                [rpc.LeaseKeepAliveRequest(ID=lease)], **self._etcd.options
            )
            try:
                response = await call.read()
            finally:
                call.cancel()
        if not isinstance(response, rpc.LeaseKeepAliveResponse) or response.TTL <= 0:
            # etcd answers an unknown lease with TTL 0 rather than an error.
            raise lease_gone(lease)

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting its keys. Revoking a lease that is already gone is fine."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        with contextlib.suppress(NotFound):
            async with self._etcd.call("lease revoke", lease=lease) as conn:
                await conn.lease.LeaseRevoke(request, **self._etcd.options)

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
        start, end = self._etcd.prefix("")
        count = rpc.RangeRequest(key=start, range_end=end, count_only=True)
        async with self._etcd.call("status") as conn:
            member = await conn.maintenance.Status(rpc.StatusRequest(), **self._etcd.options)
            keys = await conn.kv.Range(count, **self._etcd.options)
        return StoreStatus(
            self.backend,
            conn.endpoint,
            int(keys.header.revision),
            int(keys.count),
            f"etcd {member.version}, leader {member.leader:x}, raft term {member.raftTerm}, "
            f"db {member.dbSize / 1e6:.1f} MB, namespace {self._etcd.namespace or '/'}, "
            f"{len(self._etcd.endpoints)} endpoint(s)",
        )

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Drop history before `revision` (store-wide, not just this namespace).

        etcd refuses watches and reads before `revision` as soon as it answers; `physical`
        also waits until it has removed the history from its database (on a large database,
        longer than the call's timeout). Compacting to a revision that is already compacted
        is a no-op.
        """
        request = rpc.CompactionRequest(revision=revision, physical=physical)
        try:
            async with self._etcd.call("compact") as conn:
                await conn.kv.Compact(request, **self._etcd.options)
        except Compacted:
            return
        except StoreError as error:
            if "future revision" in str(error):
                raise ValidationError("revision", f"{revision} is newer than the store") from None
            raise

    async def close(self) -> None:
        """Stop keep-alive tasks and watches, then close the channels. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._etcd.close()
