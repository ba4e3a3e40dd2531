"""Two heads that disagree about the buckets (a split brain: both think a client, or an
address, is theirs) still never bind one address twice: every binding is a compare-and-swap on
the lease's key (dhcp/leases.py), so of two heads binding one address at once exactly one wins
and the other's client is NAKed. Two lease books on two connections to one real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp.leases import LeaseBook
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress
from provisioner.store.etcd import EtcdStore
from tests.ha.heads import namespace
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

ADDRESSES = 24


@pytest.fixture
async def books(etcd_server: EtcdServer) -> AsyncIterator[tuple[LeaseBook, LeaseBook]]:
    space = namespace()
    stores = [EtcdStore([etcd_server.endpoint], namespace=space) for _ in range(2)]
    inventories = [Inventory(store) for store in stores]
    found = [LeaseBook(inventory) for inventory in inventories]
    for book in found:
        await book.start()
    try:
        yield found[0], found[1]
    finally:
        for book in found:
            await book.stop()
        for store in stores:
            await store.close()


async def test_two_heads_binding_one_address_at_once_bind_it_once(
        books: tuple[LeaseBook, LeaseBook]) -> None:
    one, two = books
    now = time.time()
    wins = {"one": 0, "two": 0}
    for i in range(ADDRESSES):
        ip = IPv4Address(f"10.77.0.{10 + i}")
        first, second = MacAddress(f"52:54:00:01:00:{i:02x}"), MacAddress(f"52:54:00:02:00:{i:02x}")
        got = await asyncio.gather(one.bind(first, ip, now, 3600), two.bind(second, ip, now, 3600))
        assert sum(lease is not None for lease in got) == 1, (ip, got)
        wins["one" if got[0] is not None else "two"] += 1
        stored = await one.inventory.get_lease(ip)
        assert stored is not None
        assert stored.value.mac == (first if got[0] is not None else second)
    assert len((await one.inventory.store.range(keys.LEASES)).items) == ADDRESSES
    print(f"{ADDRESSES} addresses bound at once by two heads: {wins}")
