"""LeaseBook over a real Inventory and store: memory, sqlite and a real etcd (tests/conftest.py).

Offers are held in memory; a binding is a compare-and-swap on /leases/<ip>, so two LeaseBooks
over one store (two head nodes sharing etcd) never bind the same address, and each one's watch
keeps the other's view current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp.leases import LeaseBook
from provisioner.dhcp.subnets import Pool
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Lease, MacAddress, Node
from provisioner.store.base import KeyValueStore
from tests.support.waiting import eventually

POOL = Pool(IPv4Address("10.20.0.10"), IPv4Address("10.20.0.200"))
LEASE_TIME = 600


def mac(index: int, prefix: int = 0x52) -> MacAddress:
    return MacAddress.from_bytes(bytes((prefix, 0x54, 0, 0, index >> 8, index & 0xFF)))


@pytest.fixture
async def inventory(store: KeyValueStore) -> AsyncIterator[Inventory]:
    inv = Inventory(store)
    yield inv
    await inv.stop()


@pytest.fixture
async def books(inventory: Inventory) -> AsyncIterator[list[LeaseBook]]:
    """Started LeaseBooks, stopped at the end; append with `await start_book(...)`."""
    started: list[LeaseBook] = []
    yield started
    for book in started:
        await book.stop()


async def start_book(started: list[LeaseBook], inventory: Inventory, *,
                     offer_hold: float = 30.0, reserved: bool = False) -> LeaseBook:
    def owner(ip: IPv4Address) -> MacAddress | None:
        node = inventory.node_by_ip(ip)
        return node.mac if node is not None else None

    book = LeaseBook(inventory, offer_hold=offer_hold, reserved=owner if reserved else None)
    await book.start()
    started.append(book)
    return book



async def test_offer_holds_the_address(inventory: Inventory, books: list[LeaseBook]) -> None:
    book = await start_book(books, inventory, offer_hold=30)
    now = time.time()
    first = book.offer(mac(1), POOL, now)
    assert first is not None and first in POOL
    second = book.offer(mac(2), POOL, now, requested=first)
    assert second is not None and second != first  # held for mac 1, even when asked for
    assert book.offer(mac(1), POOL, now) == first  # a retransmitted DISCOVER: same offer
    # An offer costs no write.
    assert await inventory.list_leases() == []
    # The hold lapses after offer_hold; then the address is free again.
    assert book.offer(mac(3), POOL, now + 31, requested=first) == first
    book.drop_hold(mac(3))
    assert book.free_for(first, mac(4), now + 31)


async def test_bind_is_durable(inventory: Inventory, books: list[LeaseBook]) -> None:
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None
    lease = await book.bind(mac(1), ip, now, LEASE_TIME, hostname="n1")
    assert lease is not None and (lease.ip, lease.mac, lease.state) == (ip, mac(1), "bound")
    assert lease.expires == pytest.approx(now + LEASE_TIME)
    stored = await inventory.get_lease(ip)
    assert stored is not None and stored.value == lease
    # A head node that starts later (or this one after a restart) sees the binding.
    again = await start_book(books, inventory)
    assert again.holder(ip) == lease
    assert again.lease_of(mac(1)) == lease
    assert not again.free_for(ip, mac(2), now)
    assert again.offer(mac(2), POOL, now, requested=ip) not in (ip, None)
    # ...and the same MAC gets its address back there, without asking for it.
    assert again.offer(mac(1), POOL, now) == ip


async def test_same_mac_gets_its_previous_address(inventory: Inventory,
                                                  books: list[LeaseBook]) -> None:
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(7), POOL, now)
    assert ip is not None and await book.bind(mac(7), ip, now, LEASE_TIME) is not None
    other = POOL.last if ip != POOL.last else POOL.first
    # RFC 2131 4.3.1: its current address wins over one it asks for.
    assert book.offer(mac(7), POOL, now + 10, requested=other) == ip
    # After a release too, as long as nobody else took it.
    assert await book.end(mac(7), ip, now + 20)
    assert book.offer(mac(7), POOL, now + 30) == ip
    # And after the lease expired.
    assert book.offer(mac(7), POOL, now + LEASE_TIME + 60) == ip


async def test_reserved_address_only_for_its_owner(inventory: Inventory,
                                                   books: list[LeaseBook]) -> None:
    reserved_ip = IPv4Address("10.20.0.50")
    await inventory.add_node(Node(mac(1), "owner", ip=reserved_ip))
    await inventory.start()
    book = await start_book(books, inventory, reserved=True)
    now = time.time()
    assert not book.free_for(reserved_ip, mac(2), now)
    assert book.free_for(reserved_ip, mac(1), now)
    taken = {book.offer(mac(i), POOL, now, requested=reserved_ip) for i in range(2, 40)}
    assert reserved_ip not in taken and None not in taken
    assert book.offer(mac(2), POOL, now, reserved=reserved_ip) is None
    assert await book.bind(mac(2), reserved_ip, now, LEASE_TIME) is None
    assert await inventory.get_lease(reserved_ip) is None
    assert book.offer(mac(1), POOL, now, reserved=reserved_ip) == reserved_ip
    lease = await book.bind(mac(1), reserved_ip, now, LEASE_TIME)
    assert lease is not None and lease.mac == mac(1)


async def test_expired_lease_is_reusable(inventory: Inventory, books: list[LeaseBook]) -> None:
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None and await book.bind(mac(1), ip, now, 60) is not None
    assert not book.free_for(ip, mac(2), now + 59)
    assert book.offer(mac(2), POOL, now + 59, requested=ip) != ip
    later = now + 61
    assert book.offer(mac(3), POOL, later, requested=ip) == ip
    lease = await book.bind(mac(3), ip, later, LEASE_TIME)
    assert lease is not None and lease.mac == mac(3)
    stored = await inventory.get_lease(ip)
    assert stored is not None and stored.value.mac == mac(3)
    assert book.lease_of(mac(3)) == lease
    assert book.lease_of(mac(1)) is None


async def test_decline_quarantines(inventory: Inventory, books: list[LeaseBook]) -> None:
    decline_time = 600
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None and await book.bind(mac(1), ip, now, LEASE_TIME) is not None
    assert await book.end(mac(1), ip, now + 1, quarantine=decline_time)
    stored = await inventory.get_lease(ip)
    assert stored is not None and stored.value.state == "declined"
    for who in (mac(1), mac(2)):  # in use by something: not even the decliner gets it back
        assert not book.free_for(ip, who, now + decline_time)
        assert book.offer(who, POOL, now + decline_time, requested=ip) not in (ip, None)
        assert await book.bind(who, ip, now + decline_time, LEASE_TIME) is None
    after = now + 1 + decline_time + 1
    assert book.offer(mac(2), POOL, after, requested=ip) == ip
    assert await book.bind(mac(2), ip, after, LEASE_TIME) is not None


async def test_decline_cannot_take_another_clients_lease(inventory: Inventory,
                                                        books: list[LeaseBook]) -> None:
    """A DECLINE names an address; only the client that was given it may quarantine it (Kea and
    dnsmasq check the same), or any host on the segment could knock out others' addresses."""
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None
    lease = await book.bind(mac(1), ip, now, LEASE_TIME)
    assert lease is not None
    assert not await book.end(mac(2), ip, now + 1, quarantine=600)
    stored = await inventory.get_lease(ip)
    assert stored is not None and stored.value == lease
    assert book.lease_of(mac(1)) == lease
    renewed = await book.bind(mac(1), ip, now + 2, LEASE_TIME)  # the owner renews as usual
    assert renewed is not None and renewed.mac == mac(1)
    # Once that lease has expired the address is nobody's: a DECLINE quarantines it.
    assert await book.end(mac(2), ip, now + 2 + LEASE_TIME + 1, quarantine=600)


async def test_decline_of_an_address_never_bound(inventory: Inventory,
                                                 books: list[LeaseBook]) -> None:
    # A client DECLINEs the address we offered (ARP found it in use): nobody holds a lease.
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None
    assert await book.end(mac(1), ip, now, quarantine=300)
    assert not book.free_for(ip, mac(2), now + 299)
    assert book.offer(mac(1), POOL, now + 1) != ip


async def test_release_frees_the_address(inventory: Inventory, books: list[LeaseBook]) -> None:
    book = await start_book(books, inventory)
    now = time.time()
    ip = book.offer(mac(1), POOL, now)
    assert ip is not None and await book.bind(mac(1), ip, now, LEASE_TIME) is not None
    assert not await book.end(mac(2), ip, now + 1)  # only the holder releases
    assert not book.free_for(ip, mac(2), now + 1)
    assert await book.end(mac(1), ip, now + 2)
    stored = await inventory.get_lease(ip)
    assert stored is not None and stored.value.state == "released"
    assert book.free_for(ip, mac(2), now + 3)
    lease = await book.bind(mac(2), ip, now + 3, LEASE_TIME)
    assert lease is not None and lease.mac == mac(2)


async def test_two_head_nodes_never_bind_the_same_address(inventory: Inventory,
                                                          books: list[LeaseBook]) -> None:
    """Two LeaseBooks on one store, each with its own view, race for the same addresses: each
    address is bound exactly once, the losers get None, and the store agrees with the winners."""
    a = await start_book(books, inventory)
    b = await start_book(books, inventory)
    now = time.time()
    count = 40
    addresses = [IPv4Address(int(POOL.first) + i) for i in range(count)]
    results = await asyncio.gather(
        *(book.bind(mac(i, prefix), ip, now, LEASE_TIME)
          for i, ip in enumerate(addresses)
          for book, prefix in ((a, 0x52), (b, 0x56))))
    winners: dict[IPv4Address, Lease] = {}
    for lease in results:
        if lease is not None:
            assert lease.ip not in winners, f"{lease.ip} bound twice"
            winners[lease.ip] = lease
    assert set(winners) == set(addresses)
    assert sum(lease is None for lease in results) == count  # one loser per address
    for stored in await inventory.list_leases():
        assert stored == winners[stored.ip]


async def test_two_head_nodes_offering_from_one_pool(inventory: Inventory,
                                                     books: list[LeaseBook]) -> None:
    """DORA from two head nodes at once for distinct MACs over a pool smaller than the crowd:
    offers may collide (neither sees the other's holds), bindings never do."""
    pool = Pool(IPv4Address("10.20.1.10"), IPv4Address("10.20.1.29"))  # 20 addresses
    a = await start_book(books, inventory)
    b = await start_book(books, inventory)
    now = time.time()

    async def dora(book: LeaseBook, who: MacAddress) -> Lease | None:
        ip = book.offer(who, pool, now)
        if ip is None:
            return None
        await asyncio.sleep(0)  # let the other head node's binds interleave
        return await book.bind(who, ip, now, LEASE_TIME)

    clients = [(a if i % 2 else b, mac(i, 0x5A)) for i in range(30)]
    results = await asyncio.gather(*(dora(book, who) for book, who in clients))
    bound = [lease for lease in results if lease is not None]
    assert len({lease.ip for lease in bound}) == len(bound)
    assert all(lease.ip in pool for lease in bound)
    assert len(bound) >= 10  # contention loses some, not most
    assert {lease.mac for lease in bound} <= {who for _, who in clients}
    stored = {lease.ip: lease for lease in await inventory.list_leases()}
    assert stored == {lease.ip: lease for lease in bound}


async def test_watch_keeps_the_other_book_current(inventory: Inventory,
                                                  books: list[LeaseBook]) -> None:
    a = await start_book(books, inventory)
    b = await start_book(books, inventory)
    now = time.time()
    ip = a.offer(mac(1), POOL, now)
    assert ip is not None and await a.bind(mac(1), ip, now, LEASE_TIME) is not None
    await eventually(lambda: b.holder(ip) is not None, "B sees A's binding")
    assert b.lease_of(mac(1)) == a.lease_of(mac(1))
    assert not b.free_for(ip, mac(2), now)
    assert b.offer(mac(2), POOL, now, requested=ip) not in (ip, None)
    assert await b.bind(mac(2), ip, now, LEASE_TIME) is None
    # The client moves to B (renews there): B's CAS expects A's revision and succeeds.
    renewed = await b.bind(mac(1), ip, now + 300, LEASE_TIME)
    assert renewed is not None
    await eventually(lambda: a.lease_of(mac(1)) == renewed, "A sees B's renewal")
    # A release on A frees it for B.
    assert await a.end(mac(1), ip, now + 400)
    await eventually(lambda: (lease := b.holder(ip)) is not None and lease.state == "released",
                     "B sees A's release")
    assert b.free_for(ip, mac(2), now + 401)


async def test_expired_holds_are_forgotten(store: KeyValueStore) -> None:
    book = LeaseBook(Inventory(store), offer_hold=30)
    await book.start()
    try:
        pool = Pool(IPv4Address("10.0.0.10"), IPv4Address("10.0.0.20"))
        first = book.offer(MacAddress("52:54:00:00:aa:01"), pool, now=100.0)
        assert first is not None
        other = MacAddress("52:54:00:00:aa:02")
        assert not book.free_for(first, other, now=110.0)  # held for the first client
        book.expire_holds(now=131.0)
        assert book.free_for(first, other, now=131.0)
        assert not book._holds  # the table itself is emptied, not just ignored
    finally:
        await book.stop()
