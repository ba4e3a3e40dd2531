"""Retention: keeps the store's size to the `[retention]` settings (config_retention.py).

Every `interval` seconds one pass deletes the boot events, audit entries, expired DHCP lease
records and finished rollouts' records past retention (each module says which are:
`stale_events`, `stale_entries`, `stale_leases`, `stale_rollouts`), `batch` keys per txn, so a
pass never writes one huge transaction and other writers interleave with it. With etcd,
`compact_interval` also compacts the revision history (etcd keeps every old version of every key
until then): to `compact_keep` revisions behind the newest, and never past what this process's
own watches have applied, so the appliance never has to relist because of a compaction it made.
The compaction is logical (physical=false): etcd frees the space in the background and the call
does not wait for it.

Discovered nodes not heard from for `[dhcp] discovery_ttl` are expired by the DHCP server
itself (dhcp/discovery.py), which knows when each was last heard from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from provisioner.config_retention import RetentionSettings
from provisioner.errors import ProvisionerError
from provisioner.inventory import follower, keys
from provisioner.inventory.events import stale_events
from provisioner.inventory.leases import stale_leases
from provisioner.nodes.progress import stale_rollouts
from provisioner.security.audit import stale_entries
from provisioner.store.base import KeyValueStore, TxnConflict, TxnOp

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What one pass deleted."""

    events: int
    audit: int
    leases: int
    rollouts: int = 0


class Retention:
    """The retention passes and the compaction of one store; `run` and `compact_forever` are
    the supervised tasks (service.py spawns them)."""

    def __init__(self, store: KeyValueStore, settings: RetentionSettings, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self._clock = store, settings, clock
        #: the revision the last compaction went to (0: none yet)
        self.compacted = 0

    async def run(self) -> None:
        """A pass every `interval` seconds, the first one at once (a restart after a long
        stop catches up before the store grows further)."""
        while True:
            try:
                trimmed = await self.trim()
                if trimmed.events or trimmed.audit or trimmed.leases or trimmed.rollouts:
                    log.info("retention: deleted %d events, %d audit entries, %d expired "
                             "leases, %d finished rollouts", trimmed.events, trimmed.audit,
                             trimmed.leases, trimmed.rollouts)
            except ProvisionerError as exc:
                log.warning("retention pass failed, retrying in %gs: %s",
                            self.settings.interval, exc)
            await asyncio.sleep(self.settings.interval)

    async def trim(self) -> Trimmed:
        """One pass: delete everything past retention."""
        s, now = self.settings, self._clock()
        events = stale_events(self.store, keep=s.events_per_node,
                              before=now - s.events_days * DAY)
        audit = stale_entries(self.store, keep=s.audit_records, before=now - s.audit_days * DAY)
        return Trimmed(
            await self._delete(_unconditional(events)),
            await self._delete(_unconditional(audit)),
            await self._delete(stale_leases(self.store, before=now - s.leases_days * DAY)),
            await self._delete(stale_rollouts(self.store, keep=s.rollouts_kept,
                                              before=now - s.rollouts_days * DAY)))

    async def _delete(self, ops: AsyncIterator[TxnOp]) -> int:
        deleted, batch = 0, []
        async for op in ops:
            batch.append(op)
            if len(batch) >= self.settings.batch:
                deleted += await self._delete_batch(batch)
                batch = []
        if batch:
            deleted += await self._delete_batch(batch)
        return deleted

    async def _delete_batch(self, ops: list[TxnOp]) -> int:
        """One txn; when some keys changed meanwhile (a lease renewed) the rest go without
        them, and the changed ones stay."""
        try:
            await self.store.txn(ops)
            return len(ops)
        except TxnConflict as conflict:
            rest = [op for op in ops if op.key not in conflict.keys]
            if not rest:
                return 0
            return await self._delete_batch(rest)

    async def compact_forever(self) -> None:
        """`compact` every `compact_interval` seconds."""
        while True:
            await asyncio.sleep(self.settings.compact_interval)
            try:
                await self.compact()
            except ProvisionerError as exc:
                log.warning("etcd compaction failed, retrying in %gs: %s",
                            self.settings.compact_interval, exc)

    async def compact(self) -> int | None:
        """Compact to `compact_keep` revisions behind the newest, held back to the oldest
        revision this process's followers have applied (+ 1: where they would resume). The
        revision compacted to, or None when there was nothing to do."""
        head = (await self.store.page(keys.ROOT, limit=1)).revision
        target = head - self.settings.compact_keep
        for watcher in follower.running_on(self.store):
            if watcher.applied + 1 < target:
                await watcher.catch_up()
            target = min(target, watcher.applied + 1)
        if target <= max(self.compacted, 1):
            return None
        await self.store.compact(target)
        self.compacted = target
        log.info("store history compacted to revision %d (newest %d)", target, head)
        return target


async def _unconditional(found: AsyncIterator[str]) -> AsyncIterator[TxnOp]:
    """Deletes of create-only keys (events, audit entries): nothing rewrites them, so no
    expectation is needed, and one already gone is a no-op in a txn."""
    async for key in found:
        yield TxnOp(key, None)
