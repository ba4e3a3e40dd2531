"""A lock in the store that one process holds at a time, for work that must not run twice (a
rolling reimage): two appliances on one store, or an appliance and the CLI, race for it.

The lock is one key (keys.lock(NAME)) holding its owner and an expiry time. It is taken with a
compare-and-swap (absent, or present but expired), renewed by its owner with a compare-and-swap
on the revision it last wrote, and deleted the same way when released. An owner that dies (a
SIGKILL, a power cut) stops renewing, and the lock is free again once its expiry has passed: no
store lease, so the expiry is plain data every backend keeps alike and tests move with the
clock. A renewal that finds the key changed means the lock was lost (it expired and someone else
took it): the work must stop, which `LockLost` says.

The key's revision is also a fencing token: `fence()` is a compare-only txn op on it, so an
effect's write committed with it (a rollout's "power-cycling" step) is refused once the lock
has been taken over, even when the renewal has not noticed yet.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.errors import Conflict, NotFound
from provisioner.inventory import keys
from provisioner.store.base import KeyValue, KeyValueStore, TxnOp


class LockHeld(Conflict):
    """Someone else holds the lock; the message names them and until when."""


class LockLost(Conflict):
    """The lock expired and was taken by another owner, or was removed, while we worked."""


@dataclass(frozen=True, slots=True)
class LockState:
    owner: str
    expires: float


class StoreLock:
    """One named lock, as held (or wanted) by `owner`; `ttl` seconds between renewals at most."""

    def __init__(self, store: KeyValueStore, name: str, owner: str, *, ttl: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.key, self.owner = store, keys.lock(name), owner
        self.name, self.ttl, self.clock = name, ttl, clock
        self._revision = 0  # of our last write; 0 while not held

    @property
    def held(self) -> bool:
        return self._revision > 0

    async def holder(self) -> LockState | None:
        """Who holds the lock now (an expired holder counts as none)."""
        kv = await self.store.get(self.key)
        state = _state(kv) if kv is not None else None
        return state if state is not None and state.expires > self.clock() else None

    async def acquire(self) -> None:
        """Take the lock: LockHeld when someone else holds it and has not let it expire."""
        kv = await self.store.get(self.key)
        expect = 0
        if kv is not None:
            state = _state(kv)
            if state.owner != self.owner and state.expires > self.clock():
                raise LockHeld(f"{self.name} is held by {state.owner} for another "
                               f"{state.expires - self.clock():.0f} s; wait for it to finish")
            expect = kv.mod_revision
        try:
            self._revision = await self.store.put(self.key, self._value(), expect=expect)
        except Conflict:
            raise LockHeld(f"{self.name} was taken by another process just now; wait for it "
                           "to finish") from None

    async def renew(self) -> None:
        """Push the expiry on; LockLost when the key is no longer the one we wrote."""
        if not self.held:
            raise LockLost(f"{self.name} is not held")
        try:
            self._revision = await self.store.put(self.key, self._value(),
                                                  expect=self._revision)
        except Conflict:
            self._revision = 0
            raise LockLost(f"{self.name} expired and was taken over; stopping") from None

    async def fence(self) -> TxnOp:
        """The compare-only op that makes a txn commit only while the lock is still ours (the
        key as we last wrote it or renewed it); LockLost when it is not ours now."""
        kv = await self.store.get(self.key)
        if not self.held or kv is None or _state(kv).owner != self.owner:
            raise LockLost(f"{self.name} was taken over; stopping")
        # (our own renewal may have moved the revision on: the owner says the key is ours)
        return TxnOp(self.key, None, expect=kv.mod_revision, compare_only=True)

    async def release(self) -> None:
        """Let the lock go (only if it is still ours)."""
        revision, self._revision = self._revision, 0
        if revision:
            with contextlib.suppress(Conflict, NotFound):  # taken over: not ours to delete
                await self.store.delete(self.key, expect=revision)

    def _value(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": self.clock() + self.ttl}).encode()


def _state(kv: KeyValue) -> LockState:
    data = json.loads(kv.value)
    return LockState(str(data["owner"]), float(data["expires"]))
