"""An election among the heads on one store: one leader at a time for work that must happen
once (ha/singletons.py runs that work only while its head leads).

Modelled on etcd's concurrency package (client/v3/concurrency/election.go), but written on our
store contract (store/base.py) so that it runs alike on every backend:

- A candidate waits until keys.election(NAME) is absent, grants a lease of `ttl` seconds and
  creates the key under it with a create-if-absent compare-and-swap (`expect=0`), holding its
  own name. Whoever creates it leads. (etcd's Campaign writes one key per candidate and the
  lowest create revision leads, so waiters queue in order; here the waiters all try when the
  key goes and the compare-and-swap picks one: with two or three heads, no queue is needed.)
- The leader keeps its lease alive every ttl/3. The others watch the key from the revision they
  read it at and try again when it is deleted: when the leader resigns, or when its lease
  expires because it died or lost the store (the store then deletes the key, base.py).
- The revision that created the key is the leader's term. `fence()` is a compare-only txn op on
  it: an effect committed in one txn with it is refused once the key has gone or was created
  again by another leader, so a deposed leader (paused past its lease, cut off) writes nothing.
- A leader stops believing it leads before the store can give the key away: the lease lasts at
  least `ttl` from the send of the last keepalive the store answered, so `hold()` returns by
  then, less a margin for stopping the work, also when the store cannot be reached at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.errors import Conflict, NotFound, ProvisionerError, StoreUnavailable
from provisioner.inventory import keys
from provisioner.store.base import Compacted, KeyValueStore, TxnOp

log = logging.getLogger(__name__)


class NotLeader(Conflict):
    """This head does not lead the election (any more); the effect was not made."""


@dataclass(frozen=True, slots=True)
class Term:
    """One leadership: who, the revision that created the election key (the fencing token) and
    the store lease the key lives under."""

    election: str
    leader: str
    revision: int
    lease: int


class Election:
    """One named election as seen by `candidate` (a head's name). `ttl`: seconds a dead
    leader keeps the election before another head takes it."""

    def __init__(self, store: KeyValueStore, name: str, candidate: str, *, ttl: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store, self.name, self.candidate = store, name, candidate
        self.key, self.ttl, self.monotonic = keys.election(name), ttl, monotonic
        #: the leader steps down this long before its lease could have expired (stopping its
        #: work takes a moment, and the store's clock is not ours)
        self.margin = ttl / 5
        self.term: Term | None = None
        self._renewed = 0.0  # when the last answered keepalive (or the grant) was sent

    async def leader(self) -> str | None:
        """The name of the head that leads now, if any."""
        kv = await self.store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def campaign(self) -> Term:
        """Wait until this candidate leads; return its term."""
        while True:
            await self._wait_vacant()
            sent = self.monotonic()
            lease = await self.store.grant(self.ttl)
            try:
                revision = await self.store.put(self.key, self.candidate.encode(), expect=0,
                                                lease=lease)
            except Conflict:  # another candidate was quicker
                await self._revoke(lease)
                continue
            except BaseException:  # cancelled or the store failed: leave no lease behind
                await asyncio.shield(self._revoke(lease))
                raise
            self._renewed = sent
            self.term = Term(self.name, self.candidate, revision, lease)
            log.info("election %s: %s leads (term %d)", self.name, self.candidate, revision)
            return self.term

    async def hold(self) -> None:
        """Keep the lead alive; return as soon as it is lost (the key deleted or taken, the
        lease expired, or the store silent for too long to be sure of it)."""
        term = self._leading()
        gone = asyncio.get_running_loop().create_task(self._wait_gone(term))
        try:
            while (left := self._renewed + self.ttl - self.margin - self.monotonic()) > 0:
                await asyncio.wait({gone}, timeout=min(self.ttl / 3, left))
                if gone.done():
                    log.warning("election %s: %s lost the lead: its key changed",
                                self.name, self.candidate)
                    return
                if not await self._renew(term):
                    log.warning("election %s: %s lost the lead: its lease expired",
                                self.name, self.candidate)
                    return
            log.warning("election %s: %s steps down: the store did not answer its keepalives "
                        "for %.1f s", self.name, self.candidate, self.ttl - self.margin)
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProvisionerError):
                await gone  # (a closed store ended its watch: the lead is lost all the same)
            self.term = None

    async def resign(self, term: Term) -> None:
        """Give the lead up at once (a graceful stop) so that another head need not wait for
        the lease to expire; a term already lost is left alone."""
        if self.term == term:
            self.term = None
        with contextlib.suppress(ProvisionerError):  # not ours any more, or the store is away
            await self.store.delete(self.key, expect=term.revision)
        await self._revoke(term.lease)

    def fence(self) -> TxnOp:
        """The compare-only op that makes a txn commit only while this term leads; NotLeader
        when this candidate does not lead now."""
        term = self._leading()
        return TxnOp(self.key, None, expect=term.revision, compare_only=True)

    def _leading(self) -> Term:
        if self.term is None:
            raise NotLeader(f"{self.candidate} does not lead {self.name}; another head does "
                            "this work")
        return self.term

    async def _renew(self, term: Term) -> bool:
        """One keepalive; False when the lease has expired. A store that does not answer is
        tried again while the lease may still be alive."""
        sent = self.monotonic()
        # Bounded by the time the lead has left, not less: a shorter bound would cancel the
        # store's own timeout, which is what moves an etcd client on to the next endpoint.
        left = self._renewed + self.ttl - self.margin - sent
        try:
            await asyncio.wait_for(self.store.keepalive(term.lease), timeout=max(left, 0.0))
        except NotFound:
            return False
        except (ProvisionerError, TimeoutError) as exc:
            log.warning("election %s: keepalive failed: %s", self.name, exc)
            return True
        self._renewed = sent
        return True

    async def _wait_vacant(self) -> None:
        """Return once the election key is absent (it may be taken again at once)."""
        while (read := await self._read()) is not None:
            await self._changed(read[1])

    async def _wait_gone(self, term: Term) -> None:
        """Return once the key is no longer the one this term created."""
        while (read := await self._read()) is not None and read[0] == term.revision:
            if await self._changed(read[1]):
                return

    async def _read(self) -> tuple[int, int] | None:
        """The election key's mod revision and the store revision it was read at; None when
        the key is absent."""
        result = await self.store.range(self.key)  # (a prefix: other elections may share it)
        found = [kv for kv in result.items if kv.key == self.key]
        return (found[0].mod_revision, result.revision) if found else None

    async def _changed(self, revision: int) -> bool:
        """Wait for the next change of the key after store `revision`; False when the watch's
        history was compacted away (read the key again)."""
        with contextlib.suppress(Compacted):
            async for event in self.store.watch(self.key, revision + 1):
                if event.key == self.key:
                    return True
            raise StoreUnavailable(f"election {self.name}: the store was closed")
        return False

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(ProvisionerError):  # expired already, or the store is away
            await self.store.revoke(lease)


async def leaders(store: KeyValueStore) -> dict[str, str]:
    """Every election with a leader now: its name -> the leader's candidate id (its head's
    name first, then process and a random part: nodes/rollout.py owner_id)."""
    return {kv.key.removeprefix(keys.ELECTIONS): kv.value.decode()
            for kv in (await store.range(keys.ELECTIONS)).items}
