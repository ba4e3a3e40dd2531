"""Address leases: offers held in memory, bindings written to the store with compare-and-swap.

- An OFFER costs no write: the address is held in memory for `offer_hold` seconds.
- A binding (the ACK) is a CAS on /leases/<ip>: `expect=0` for a free address, the current
  revision for one this client held or one that expired. Two head nodes sharing one etcd can
  offer the same address, but only one CAS wins; the other client is NAKed and starts over. So
  two head nodes never *bind* the same address, and the ACK goes out only after the write is
  durable (the sqlite backend group-commits concurrent binds into one fsync).
- The view of all leases is kept in memory and fed by `watch`, so choosing an address never
  waits on the store; another head node's bindings arrive through the same watch.
- A node keeps its address across PXE ROM, iPXE and the booted OS: leases are keyed by MAC,
  not by client identifier (option 61 differs between those three).
- The book knows whether the store answers (`store_up`): a write that finds it unreachable
  marks it down, `probe()` (run every few seconds by the server) marks it up again. While it is
  down nothing is offered that could not be recorded; leases already recorded are given again
  as they stand (policy.cached_lease_time).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator, Set
from ipaddress import IPv4Address

from provisioner.dhcp.subnets import Pool, pick_address
from provisioner.errors import Conflict, ProvisionerError, StoreUnavailable
from provisioner.inventory import codec, keys
from provisioner.inventory.follower import Follower
from provisioner.inventory.repository import Inventory
from provisioner.inventory.versioned import Versioned
from provisioner.nodes.model import Lease, MacAddress
from provisioner.store.base import EventType, WatchEvent

log = logging.getLogger(__name__)
OWN_LIMIT = 4096  # own revisions remembered before the ones the watch has passed are dropped
_LEASE_SLOTS = ("ip", "mac", "expires", "hostname", "client_id", "state")
_STATES = frozenset({"offered", "bound", "declined", "released"})


def _lease(ip: IPv4Address, mac: MacAddress, expires: float, *, hostname: str | None = None,
           client_id: str | None = None, state: str = "bound") -> Lease:
    """Lease(...) for an `ip` that is already an IPv4Address: its __post_init__ formats and
    re-parses the address (6 us, a fifth of a bind's own cost)."""
    if type(ip) is not IPv4Address or state not in _STATES:
        return Lease(ip, mac, expires, hostname, client_id, state)
    lease = object.__new__(Lease)
    for name, value in zip(_LEASE_SLOTS, (ip, mac, expires, hostname, client_id, state),
                           strict=True):
        object.__setattr__(lease, name, value)
    return lease




class _Busy(Set[IPv4Address]):
    """Addresses not free for `mac` at `now`: membership is computed per address, so choosing
    from a pool of millions costs what the search probes, not the pool's size."""

    def __init__(self, book: LeaseBook, mac: MacAddress, now: float) -> None:
        self._book, self._mac, self._now = book, mac, now

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and not self._book.free_for(ip, self._mac, self._now)

    def __iter__(self) -> Iterator[IPv4Address]:
        return iter(())  # pick_address only asks for membership

    def __len__(self) -> int:
        return 0


class LeaseBook:
    def __init__(self, inventory: Inventory, *, offer_hold: float = 30.0,
                 reserved: Callable[[IPv4Address], MacAddress | None] | None = None) -> None:
        self.inventory = inventory
        self.offer_hold = offer_hold
        self._reserved = reserved or (lambda ip: None)
        self._leases: dict[IPv4Address, Versioned[Lease]] = {}
        self._by_mac: dict[MacAddress, IPv4Address] = {}
        self._holds: dict[IPv4Address, tuple[MacAddress, float]] = {}
        self._follower = Follower(inventory.store, keys.LEASES, self._apply)
        # Revisions of our own writes, already in the view: their watch events are skipped
        # unparsed (decoding costs more than the rest of a bind).
        self._own: set[int] = set()
        self._seen = 0  # the newest revision the watch has delivered
        # Writes in flight, by key: the watch can deliver one before its put() returns (the
        # store's reader sees a commit as soon as the writer thread makes it).
        self._inflight: dict[str, tuple[Lease, bytes]] = {}
        #: False from a write that found the store unreachable until a probe() answers
        self.store_up = True

    # -- the in-memory view --------------------------------------------------------------

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, event: WatchEvent) -> None:
        revision = event.revision
        self._seen = max(self._seen, revision)
        if revision in self._own:
            self._own.discard(revision)
            return
        pending = self._inflight.get(event.key)
        if pending is not None and event.type is EventType.PUT and pending[1] == event.value:
            lease = pending[0]  # our own write, seen before its put() returned
            ip = lease.ip
        else:
            try:
                ip = ipaddress.IPv4Address(event.key.removeprefix(keys.LEASES))
                if event.type is EventType.DELETE:
                    self._forget(ip)
                    return
                lease = codec.decode_lease(event.value)
            except (ValueError, KeyError, ProvisionerError) as exc:
                log.warning("dhcp: skipping unreadable lease %s: %s", event.key, exc)
                return
        current = self._leases.get(ip)
        if current is None or current.revision < event.revision:
            self._remember(Versioned(lease, event.revision))

    def _remember(self, entry: Versioned[Lease]) -> None:
        self._forget(entry.value.ip)
        self._leases[entry.value.ip] = entry
        if entry.value.state != "declined":
            self._by_mac[entry.value.mac] = entry.value.ip

    def _forget(self, ip: IPv4Address) -> None:
        old = self._leases.pop(ip, None)
        if old is not None and self._by_mac.get(old.value.mac) == ip:
            del self._by_mac[old.value.mac]

    def lease_of(self, mac: MacAddress) -> Lease | None:
        ip = self._by_mac.get(mac)
        return self._leases[ip].value if ip is not None else None

    def holder(self, ip: IPv4Address) -> Lease | None:
        entry = self._leases.get(ip)
        return entry.value if entry else None

    def free_for(self, ip: IPv4Address, mac: MacAddress, now: float) -> bool:
        """Whether `mac` may have `ip` now: no other client's active lease, hold or
        reservation, and not quarantined."""
        owner = self._reserved(ip)
        if owner is not None and owner != mac:
            return False
        entry = self._leases.get(ip)
        if entry is not None and entry.value.active(now) and (
                entry.value.state == "declined" or entry.value.mac != mac):
            return False
        hold = self._holds.get(ip)
        return hold is None or hold[0] == mac or hold[1] <= now

    # -- decisions -----------------------------------------------------------------------

    def offer(self, mac: MacAddress, pool: Pool, now: float, *,
              requested: IPv4Address | None = None,
              reserved: IPv4Address | None = None) -> IPv4Address | None:
        """Choose an address for `mac` and hold it; None when nothing is free."""
        choice = self.choose(mac, pool, now, requested=requested, reserved=reserved)
        if choice is not None:
            self._holds[choice] = (mac, now + self.offer_hold)
        return choice

    def choose(self, mac: MacAddress, pool: Pool, now: float, *,
               requested: IPv4Address | None = None,
               reserved: IPv4Address | None = None) -> IPv4Address | None:
        if reserved is not None:
            return reserved if self.free_for(reserved, mac, now) else None
        previous = self._by_mac.get(mac)
        if previous is not None and previous in pool and self.free_for(previous, mac, now):
            return previous  # RFC 2131 4.3.1: the client's current or previous address
        return pick_address(pool.first, pool.last, _Busy(self, mac, now), mac=mac,
                            requested=requested)

    async def bind(self, mac: MacAddress, ip: IPv4Address, now: float, lease_time: int, *,
                   hostname: str | None = None, client_id: str | None = None) -> Lease | None:
        """Bind `ip` to `mac` durably; None if someone else has it (the caller NAKs)."""
        lease = _lease(ip, mac, now + lease_time, hostname=hostname, client_id=client_id)
        for _ in range(2):
            if not self.free_for(ip, mac, now):
                return None
            entry = self._leases.get(ip)
            try:
                await self._put(lease, expect=entry.revision if entry else 0)
            except Conflict:
                await self._reload(ip)  # another head node won; look again
                continue
            self._holds.pop(ip, None)
            return lease
        return None

    async def _put(self, lease: Lease, *, expect: int) -> None:
        """Inventory.put_lease (the same key and bytes, CAS), then into the view."""
        key, data = keys.lease(lease.ip), codec.encode_lease(lease)
        pending = self._inflight[key] = (lease, data)
        try:
            revision = await self.inventory.store.put(key, data, expect=expect)
        except (StoreUnavailable, TimeoutError):
            self._store_lost()
            raise
        finally:
            if self._inflight.get(key) is pending:
                del self._inflight[key]
        current = self._leases.get(lease.ip)
        if current is None or current.revision < revision:  # else the watch brought newer
            self._remember(Versioned(lease, revision))
        if revision > self._seen:  # else the watch has delivered it already
            own = self._own
            own.add(revision)
            if len(own) > OWN_LIMIT:  # bounded, should a watch ever skip revisions
                self._own = {r for r in own if r > self._seen}

    def _store_lost(self) -> None:
        if self.store_up:
            log.warning("dhcp: the store is unreachable: only leases already recorded are "
                        "given, no new address is offered until it answers again")
        self.store_up = False

    async def probe(self, timeout: float) -> bool:
        """Ask the store for its status (bounded by `timeout`); `store_up` follows the answer."""
        try:
            await asyncio.wait_for(self.inventory.store.status(), timeout)
        except (StoreUnavailable, TimeoutError, OSError):
            self._store_lost()
            return False
        if not self.store_up:
            log.warning("dhcp: the store answers again: new addresses are offered")
        self.store_up = True
        return True

    async def _reload(self, ip: IPv4Address) -> None:
        fresh = await self.inventory.get_lease(ip)
        if fresh is None:
            self._forget(ip)
        else:
            self._remember(fresh)

    async def end(self, mac: MacAddress, ip: IPv4Address, now: float, *,
                  quarantine: float = 0.0) -> bool:
        """RELEASE (quarantine 0) or DECLINE (quarantine > 0: nobody gets it until then)."""
        entry = self._leases.get(ip)
        if quarantine <= 0 and (entry is None or entry.value.mac != mac):
            return False
        if entry is not None and entry.value.mac != mac and entry.value.active(now):
            return False  # another client's lease: not this client's to decline
        state = "declined" if quarantine > 0 else "released"
        lease = _lease(ip, mac, now + quarantine, state=state)
        try:
            await self._put(lease, expect=entry.revision if entry else 0)
        except Conflict:
            await self._reload(ip)
            return False
        self._holds.pop(ip, None)
        return True

    def drop_hold(self, mac: MacAddress) -> None:
        """The client chose another server (RFC 2131 4.3.2): free what we offered it."""
        for ip, (holder, _) in list(self._holds.items()):
            if holder == mac:
                del self._holds[ip]

    def expire_holds(self, now: float) -> None:
        for ip, (_, until) in list(self._holds.items()):
            if until <= now:
                del self._holds[ip]
