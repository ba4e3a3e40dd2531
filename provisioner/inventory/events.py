"""Node timelines: boot events, append-only, one key per event in time order
(keys.event(MAC, SEQ)); reading them back is `list_events` (or `events_page`), and what is
past retention is found by `stale_events` (runtime/retention.py deletes it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from provisioner.errors import Conflict
from provisioner.inventory import codec, keys
from provisioner.inventory.versioned import CAS_RETRIES
from provisioner.metrics import stages
from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.store.base import KeyValue, KeyValueStore, TxnOp

PAGE = 500  # keys read per request while looking for stale events


class EventLog:
    store: KeyValueStore

    @staticmethod
    def event_op(event: BootEvent, bump: int = 0) -> TxnOp:
        """The write that records `event` (create-only; `bump` moves it to the next key)."""
        key = keys.event(event.mac.value, keys.seq(event.at, bump))
        return TxnOp(key, codec.encode_event(event), expect=0)

    async def add_event(self, event: BootEvent) -> None:
        """Record `event`; events at the same instant get the next free key, never overwrite."""
        for bump in range(CAS_RETRIES):
            op = self.event_op(event, bump)
            assert op.value is not None
            with contextlib.suppress(Conflict):
                await self.store.put(op.key, op.value, expect=0)
                stages.recorded(event.mac.value, event.kind, event.at)
                return
        raise Conflict(f"could not record event {event.kind} for {event.mac}")

    async def list_events(self, mac: MacAddress) -> list[BootEvent]:
        result = await self.store.range(keys.events(mac.value))
        return [codec.decode_event(kv.value) for kv in result.items]

    async def latest_events(self, mac: MacAddress, limit: int) -> tuple[list[BootEvent], bool]:
        """A node's newest `limit` events in time order, and whether there are older ones."""
        page = await self.store.page(keys.events(mac.value), limit=limit + 1, reverse=True)
        items = page.items[:limit]
        return [codec.decode_event(kv.value) for kv in reversed(items)], len(page.items) > limit

    async def events_page(self, mac: MacAddress, *, after: str = "",
                          limit: int) -> tuple[list[BootEvent], str]:
        """Up to `limit` of a node's events in time order after the sequence `after` (the
        cursor the previous page returned); the events and the next cursor ("" once done)."""
        start = keys.event(mac.value, after) if after else ""
        # One more than asked: a page that ends the timeline says so (no cursor), and its last
        # state runs until now rather than past the page.
        read = await self.store.page(keys.events(mac.value), after=start, limit=limit + 1)
        items = read.items[:limit]
        cursor = keys.seq_of(items[-1].key) if len(read.items) > limit else ""
        return [codec.decode_event(kv.value) for kv in items], cursor


async def stale_events(store: KeyValueStore, *, keep: int, before: float) -> AsyncIterator[str]:
    """The keys of events past retention: in each node's timeline, all but the newest `keep`
    and any older than `before` (seconds). One timeline at a time, newest first, so memory
    stays at one page however long a timeline has grown."""
    after = ""
    while True:
        page = await store.page(keys.EVENTS, after=after, limit=1)
        if not page.items:
            return
        mac = keys.event_mac(page.items[0].key)
        async for key in _stale_in_timeline(store, mac, keep, before):
            yield key
        after = keys.events_past(mac)


async def _stale_in_timeline(store: KeyValueStore, mac: str, keep: int,
                             before: float) -> AsyncIterator[str]:
    seen, after = 0, ""
    while True:
        page = await store.page(keys.events(mac), after=after, limit=PAGE, reverse=True)
        for kv in page.items:
            seen += 1
            if seen > keep or _older(kv, before):
                yield kv.key
        if len(page.items) < PAGE:
            return
        after = page.items[-1].key


def _older(kv: KeyValue, before: float) -> bool:
    at = keys.seq_time(kv.key)
    return at is not None and at < before
