"""This head's membership of the live set: its entry under a store lease, renewed, and the
live set followed by a watch.

- `start()` lists the heads already there, registers this one (`heads/<name>`, put with a
  lease of `[ha] ttl` seconds) and renews the lease every ttl/3 in a supervised task.
- Every head follows the `heads/` prefix (inventory/follower.py): a head joins with its PUT
  and leaves with the DELETE the store emits when its lease expires or is revoked, so all
  heads know the same live set within the watch's delay, and compute the same bucket table
  from it (ha/buckets.py).
- A renewal that fails, or none for 2/3 of the ttl, fences the head at once (ha/fencing.py):
  `fenced` says why; the DHCP server answers no client without a recorded lease and the
  boot plane stops issuing tokens. The next renewal that succeeds unfences it; when the
  lease has expired meanwhile, the head joins again with a new one.
- `stop()` revokes the lease, so the other heads take over this head's clients at once
  instead of after its ttl.

With the memory or sqlite store there is one process, so one head: it owns every bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from provisioner.errors import Conflict, NotFound, ProvisionerError
from provisioner.ha.buckets import assign, bucket_of, shares
from provisioner.ha.fencing import Session
from provisioner.ha.records import HeadRecord, decode_head, encode_head
from provisioner.inventory import keys
from provisioner.inventory.follower import Follower
from provisioner.runtime import supervisor
from provisioner.store.base import EventType, KeyValueStore, WatchEvent

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, store: KeyValueStore, record: HeadRecord, ttl: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.record = record
        self.name = record.name
        self.ttl = ttl
        self.session = Session(ttl)
        #: the live heads by name, as the watch on heads/ shows them
        self.live: dict[str, HeadRecord] = {}
        #: the owner of each bucket: computed from the live set and this head
        self.table: tuple[str, ...] = assign([self.name])
        self._clock = clock
        self._lease = 0
        self._follower = Follower(store, keys.HEADS, self._apply)
        self._keeper: supervisor.Supervised | None = None
        self._said = ""  # the fencing state last logged ("" while a member)

    # -- what the planes ask ---------------------------------------------------------------

    @property
    def fenced(self) -> str | None:
        """Why this head must not hand out new leases or tokens now; None while a member."""
        return self.session.fenced(self._clock())

    def owns(self, chaddr: bytes) -> bool:
        """Whether the client with hardware address `chaddr` (hlen bytes) is this head's: its
        bucket is ours in the table of the live set as last seen (fenced or not: the DHCP
        server asks `fenced` apart)."""
        return self.table[bucket_of(chaddr)] == self.name

    def share(self) -> int:
        """How many of the 256 buckets this head owns."""
        return shares(self.table).get(self.name, 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._follower.start()
        await self.renew()
        self._keeper = supervisor.ambient().spawn("ha membership", self._keep)

    async def stop(self) -> None:
        """Leave the live set at once (revoke the lease) and stop following it."""
        if self._keeper is not None:
            await self._keeper.stop()
        await self._follower.stop()
        if self._lease:
            with contextlib.suppress(ProvisionerError, TimeoutError, OSError):
                await asyncio.wait_for(self.store.revoke(self._lease), self.ttl / 3)
            self._lease = 0

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.renew()

    async def renew(self) -> None:
        """Renew the lease (join with a new one when there is none or it is gone); a failure
        fences the head until the next success."""
        sent = self._clock()
        try:
            if self._lease:
                await asyncio.wait_for(self.store.keepalive(self._lease), self.ttl / 3)
            else:
                await self._join()
            self.session.renewed(sent)
        except NotFound:
            self._lease = 0
            self.session.failed("its store lease expired")
        except Conflict as exc:
            self.session.failed(str(exc))
        except (ProvisionerError, TimeoutError, OSError) as exc:
            self.session.failed(f"the store is unreachable ({str(exc) or type(exc).__name__})")
        self._say()

    async def _join(self) -> None:
        """Put our entry with a new lease where there is none (expect=0). An entry of our name
        that advertises our addresses is this head's previous run (a crash leaves it until
        its lease expires): it is taken over at once. One with other addresses is another
        head given our name: we stay out (fenced) until the name is free."""
        lease = await asyncio.wait_for(self.store.grant(self.ttl), self.ttl / 3)
        key = keys.head(self.name)
        try:
            expect = await self._previous_run(key)
            await asyncio.wait_for(self.store.put(key, encode_head(self.record), expect=expect,
                                                  lease=lease), self.ttl / 3)
        except Conflict:
            with contextlib.suppress(ProvisionerError, TimeoutError, OSError):
                await asyncio.wait_for(self.store.revoke(lease), self.ttl / 3)
            raise Conflict(f"another live head is named {self.name!r}; give each head its own "
                           "[ha] name") from None
        self._lease = lease

    async def _previous_run(self, key: str) -> int:
        """The revision of our entry left by this head's previous run, else 0 (absent)."""
        found = await asyncio.wait_for(self.store.get(key), self.ttl / 3)
        if found is None:
            return 0
        try:
            previous = decode_head(found.value)
        except ProvisionerError:
            return found.mod_revision  # unreadable: not a head that could answer anyone
        if replace(previous, since=0.0) != replace(self.record, since=0.0):
            raise Conflict(key)
        return found.mod_revision

    def _say(self) -> None:
        """Log each change between member and fenced, once."""
        reason = self.fenced or ""
        if reason == self._said:
            return
        if reason and not self._said:
            log.warning("ha: head %s is fenced: %s; it offers no new DHCP lease and issues no "
                        "boot token until its store session is back", self.name, reason)
        elif not reason:
            log.warning("ha: head %s is a live member again; it answers %d of 256 DHCP "
                        "buckets", self.name, self.share())
        self._said = reason

    # -- the live set ----------------------------------------------------------------------

    def _apply(self, event: WatchEvent) -> None:
        name = event.key.removeprefix(keys.HEADS)
        if event.type is EventType.DELETE:
            if self.live.pop(name, None) is not None:
                log.warning("ha: head %s left the live set", name)
        else:
            try:
                self.live[name] = decode_head(event.value)
            except ProvisionerError as exc:
                log.warning("ha: skipping unreadable head entry %s: %s", event.key, exc)
                return
            log.info("ha: head %s is live", name)
        self.table = assign({*self.live, self.name})
        log.info("ha: %d live head(s); head %s answers %d of 256 DHCP buckets",
                 len(self.live | {self.name: self.record}), self.name, self.share())
