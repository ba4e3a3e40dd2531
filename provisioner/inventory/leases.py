"""DHCP leases in the store, one record per address (keys.lease(IP)).

The DHCP lease book (dhcp/leases.py) binds with the same key and bytes from its own
watch-fed view; these are the plain reads and the compare-and-swap write, and
`stale_leases`, the records retention deletes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

from provisioner.inventory import codec, keys
from provisioner.inventory.versioned import Versioned
from provisioner.nodes.model import Lease, check_ipv4
from provisioner.store.base import KeyValueStore, TxnOp

PAGE = 500  # records read per request while looking for stale ones


class LeaseRecords:
    store: KeyValueStore

    async def get_lease(self, ip: ipaddress.IPv4Address) -> Versioned[Lease] | None:
        kv = await self.store.get(keys.lease(check_ipv4(ip)))
        if kv is None:
            return None
        return Versioned(codec.decode_lease(kv.value), kv.mod_revision)

    async def put_lease(self, lease: Lease, *, expect: int | None) -> int:
        """Write a lease with CAS (`expect=0` to take a free address). Two head nodes sharing
        one etcd race here; exactly one wins, the other gets Conflict and picks again."""
        return await self.store.put(keys.lease(lease.ip), codec.encode_lease(lease),
                                    expect=expect)

    async def list_leases(self) -> list[Lease]:
        result = await self.store.range(keys.LEASES)
        return [codec.decode_lease(kv.value) for kv in result.items]


async def stale_leases(store: KeyValueStore, *, before: float) -> AsyncIterator[TxnOp]:
    """Deletes of the lease records that expired before `before` (seconds), each expecting
    the record's revision: a lease renewed or rebound meanwhile is not deleted."""
    after = ""
    while True:
        page = await store.page(keys.LEASES, after=after, limit=PAGE)
        for kv in page.items:
            if codec.decode_lease(kv.value).expires < before:
                yield TxnOp(kv.key, None, expect=kv.mod_revision)
        if len(page.items) < PAGE:
            return
        after = page.items[-1].key
