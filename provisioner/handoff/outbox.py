"""A durable outbox for handoffs: a booted node is registered with the scheduler even if the
scheduler (or the appliance) is down when the node boots.

`submit(node)` writes keys.outbox(MAC) and returns (or `entry(node)` is committed
in the caller's own txn, then `accepted(node, revision)`); a worker per MAC delivers it
with exponential backoff (0.2 s doubling to 30 s, each wait jittered to 50-100 % so a scheduler
coming back is not hit by every node at the same instant). Delivery is at-least-once: register,
then `on_confirmed(mac)`, then delete the entry with a compare-and-swap, so a crash in between
delivers again rather than losing the node; register and on_confirmed must be idempotent.
`on_confirmed(mac, done)` is handed the delete (`done`) and may commit it in one txn with its own
writes (the ready transition): it returns True when it did, and then no separate delete is made.
A newer submit for the same MAC replaces the entry; the CAS delete then fails (a TxnConflict in
on_confirmed's txn, which then writes nothing) and the newer entry is delivered too.

The outbox prefix is followed, not read once (inventory/follower.py, a supervised watch):
`start()` picks up the entries a previous run left behind, and an entry written later by
another process on the same store (a second appliance, the CLI) or written again is delivered
without a restart. Two appliances may then both deliver one entry: delivery is at-least-once
anyway, and the CAS delete lets one of them finish it. `flush(timeout)` lets the deliveries in
progress finish before a stop; what is not delivered by then stays in the store.

`tried(mac, timeout)` waits (bounded) until a worker has made its first registration attempt
for the MAC: the boot callback answers only then, so the node agent's first poll finds the
scheduler already holding its credential's hash instead of being refused and backing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from provisioner.errors import Conflict, HandoffError, NotFound, ProvisionerError, StoreUnavailable
from provisioner.handoff.base import Handoff, HandoffNode, HandoffRejected
from provisioner.inventory import keys
from provisioner.inventory.follower import Follower
from provisioner.nodes.model import MacAddress
from provisioner.store.base import (
    EventType,
    KeyValue,
    KeyValueStore,
    TxnConflict,
    TxnOp,
    WatchEvent,
)

log = logging.getLogger("provisioner.handoff")

#: (mac, the entry's delete) -> True if the delete was committed with the confirmation
OnConfirmed = Callable[[MacAddress, TxnOp], Awaitable[bool | None]]


@dataclass
class Delivery:
    """What an operator sees about one queued handoff (kept in memory, not in the store: a
    write per failed attempt would load the store exactly when things are already bad)."""

    mac: str
    name: str
    attempts: int = 0
    last_error: str = ""
    next_try: float = 0.0


class HandoffQueue:
    def __init__(self, store: KeyValueStore, handoff: Handoff, on_confirmed: OnConfirmed, *,
                 first_delay: float = 0.2, max_delay: float = 30.0,
                 concurrency: int = 64) -> None:
        self.store = store
        self.handoff = handoff
        self.on_confirmed = on_confirmed
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._limit = asyncio.Semaphore(concurrency)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        #: set (and dropped) when the MAC's worker has tried a registration: see `tried`
        self._tried: dict[str, asyncio.Event] = {}
        self.deliveries: dict[str, Delivery] = {}
        self._written: dict[str, tuple[HandoffNode, int]] = {}  # just submitted, by MAC
        #: the newest entry revision handed to a worker, by MAC: our own writes come back
        #: through the watch, and must not wake their worker a second time
        self._seen: dict[str, int] = {}
        self._follower = Follower(store, keys.OUTBOX, self._watched)
        self._running = False

    async def start(self) -> None:
        """Deliver what is queued, including entries left by a previous run, and follow the
        outbox for entries other processes write."""
        self._running = True
        # entries accepted while delivery was off (a head that did not lead) were not handed
        # to a worker: the follower's first read must find them fresh
        self._seen.clear()
        await self._follower.start()

    def _watched(self, event: WatchEvent) -> None:
        mac = event.key.removeprefix(keys.OUTBOX)
        if event.type is EventType.DELETE:
            self._seen.pop(mac, None)
        elif self._fresh(mac, event.revision):
            self._spawn(mac)

    async def submit(self, node: HandoffNode) -> None:
        """Queue the node's registration durably; delivery happens in the background."""
        op = self.entry(node)
        assert op.value is not None
        self.accepted(node, await self.store.put(op.key, op.value))

    @staticmethod
    def entry(node: HandoffNode) -> TxnOp:
        """The outbox write for `node`, for a caller that commits it in its own txn; call
        `accepted` once it is committed."""
        entry = {"node": node.to_dict(), "submitted": time.time()}
        return TxnOp(keys.outbox(str(node.mac)), json.dumps(entry).encode())

    def accepted(self, node: HandoffNode, revision: int) -> None:
        """The entry for `node` is in the store at `revision`: deliver it. With delivery off
        (this head does not lead) it stays in the store for the head that does, and for this
        one's start()."""
        if not self._running:
            return
        if not self._fresh(str(node.mac), revision):
            return  # the watch was quicker: a worker already has this entry
        self._written[str(node.mac)] = (node, revision)  # spares the worker a read
        self._spawn(str(node.mac))

    def _fresh(self, mac: str, revision: int) -> bool:
        """True (and remembered) when `revision` is newer than any entry seen for `mac`."""
        if revision <= self._seen.get(mac, 0):
            return False
        self._seen[mac] = revision
        return True

    async def queued(self) -> list[HandoffNode]:
        """Every handoff not yet confirmed, from the store."""
        return [HandoffNode.from_dict(json.loads(kv.value)["node"])
                for kv in (await self.store.range(keys.OUTBOX)).items]

    async def flush(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the deliveries under way to finish (a graceful
        stop); return how many are left (they stay in the store)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._follower.stop()  # deliver what is known now; take no new entries
        while self._workers and loop.time() < deadline:
            for wake in self._wake.values():
                wake.set()  # skip the backoff: try each one last time now
            await asyncio.wait(list(self._workers.values()), timeout=min(
                1.0, max(0.0, deadline - loop.time())))
        return len(self._workers)

    async def stop(self) -> None:
        """Stop delivering; queued entries stay in the store for the next start()."""
        self._running = False
        await self._follower.stop()
        self._seen.clear()  # a later start() (this head leads again) delivers them afresh
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tried(self, mac: str, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the next registration attempt of `mac`'s entry to
        end (delivered or not); True when it has. Returns at once when no worker has one
        pending (delivery is off here, as on a head that does not lead, or already done)."""
        event = self._tried.get(mac)
        if event is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()

    def _attempt_ended(self, mac: str) -> None:
        event = self._tried.pop(mac, None)
        if event is not None:
            event.set()

    def _spawn(self, mac: str) -> None:
        self._tried.setdefault(mac, asyncio.Event())
        task = self._workers.get(mac)
        if task is not None and not task.done():
            self._wake[mac].set()  # a newer entry: try it now instead of after the backoff
            return
        self._wake[mac] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._deliver(mac), name=f"handoff {mac}")
        self._workers[mac] = task
        task.add_done_callback(functools.partial(self._forget, mac))

    def _forget(self, mac: str, task: asyncio.Task[None]) -> None:
        if self._workers.get(mac) is task:
            del self._workers[mac]
            self._wake.pop(mac, None)
            self.deliveries.pop(mac, None)
            self._attempt_ended(mac)  # a worker cancelled or done: nobody waits for it

    async def _deliver(self, mac: str) -> None:
        delay = self.first_delay
        while self._running:
            try:
                if await self._attempt(mac):
                    return
                delay = self.first_delay  # the entry was replaced: deliver the new one now
                continue
            except (HandoffError, StoreUnavailable) as exc:
                self._failed(mac, exc)
                if isinstance(exc, HandoffRejected):
                    delay = self.max_delay  # needs the operator; keep trying, slowly
            except ProvisionerError as exc:  # a refusal: keep the entry, go slowly
                self._failed(mac, exc)
                delay = self.max_delay
            except Exception as exc:  # a bug must not end delivery for good
                log.exception("handoff of %s failed unexpectedly", mac)
                self._failed(mac, ProvisionerError(f"unexpected: {exc!r}"))
                delay = self.max_delay
            wait = delay * random.uniform(0.5, 1.0)
            self.deliveries[mac].next_try = time.time() + wait
            wake = self._wake[mac]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()
            delay = min(delay * 2, self.max_delay)

    async def _attempt(self, mac: str) -> bool:
        """One delivery. True when done (or nothing is left to deliver), False when a newer
        entry replaced the one just delivered."""
        written = self._written.pop(mac, None)
        if written is not None:
            node, revision = written
        else:
            kv = await self.store.get(keys.outbox(mac))
            if kv is None:
                return True
            node, revision = _node(kv), kv.mod_revision
        record = self.deliveries.setdefault(mac, Delivery(mac, node.name))
        record.attempts += 1
        async with self._limit:
            try:
                await self.handoff.register(node)
            finally:
                self._attempt_ended(mac)
        committed: bool | None = False
        try:
            committed = await self.on_confirmed(node.mac, TxnOp(keys.outbox(mac), None, revision))
        except TxnConflict as exc:
            if keys.outbox(mac) in exc.keys:
                return False  # replaced (or gone) meanwhile: nothing was written
            raise
        except StoreUnavailable:
            raise
        except ProvisionerError as exc:  # e.g. the node was retired meanwhile: nothing to do
            log.warning("handoff of %s confirmed, but marking it ready failed: %s", mac, exc)
        if not committed:
            try:
                await self.store.delete(keys.outbox(mac), expect=revision)
            except Conflict:
                return False
            except NotFound:
                pass
        # A submit that landed after our delete has no other worker to deliver it.
        return mac not in self._written

    def _failed(self, mac: str, exc: ProvisionerError) -> None:
        record = self.deliveries.setdefault(mac, Delivery(mac, ""))
        if record.attempts <= 1 or str(exc) != record.last_error:
            log.warning("handoff of %s not confirmed yet (attempt %d): %s", mac,
                        record.attempts, exc)
        record.last_error = str(exc)


def _node(kv: KeyValue) -> HandoffNode:
    data: dict[str, Any] = json.loads(kv.value)
    return HandoffNode.from_dict(data["node"])
