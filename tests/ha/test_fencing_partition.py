"""A head cut from etcd (its TCP link to etcd reset, the other head's intact): it fences itself
within its ttl and offers nothing to a new client, whose DISCOVERs the other head answers once
the cut head's lease has expired; when the link heals the cut head is a member again, the split
is as before, and the clients bound before the cut keep their leases, unchanged in the store."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from provisioner.ha.buckets import bucket_of
from provisioner.inventory import keys
from tests.dhcp.test_vectors import wire
from tests.ha.heads import Head, Relay, StoreLink, namespace, net_base
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

OFFER, ACK = 2, 5
BOUND = 15.0  # s: generous bounds on what should take a ttl (3 s) and a watch
BOUND_CLIENTS = 8


@pytest.fixture
async def cut_pair(etcd_server: EtcdServer) -> AsyncIterator[tuple[Head, Head, Relay, StoreLink]]:
    link = StoreLink(etcd_server.endpoint)
    await link.start()
    base, space = net_base(), namespace()
    relay_ip = f"{base}.2"
    heads = [Head.make("head-one", f"{base}.1", link.endpoint, space, relay_ip),
             Head.make("head-two", f"{base}.3", etcd_server.endpoint, space, relay_ip)]
    relay = Relay(relay_ip, heads)
    try:
        for head in heads:
            await head.start()
        await until(lambda: all(len(h.membership.live) == 2 for h in heads), "both heads live")
        yield heads[0], heads[1], relay, link
    finally:
        link.heal()
        for head in heads:
            await head.close()
        relay.close()
        await link.close()


async def until(check: object, what: str) -> float:
    assert callable(check)
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < BOUND, f"not within {BOUND:g} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def macs_of(head: Head, count: int) -> list[bytes]:
    table = head.membership.table
    found: list[bytes] = []
    while len(found) < count:
        mac = bytes.fromhex("525400") + secrets.token_bytes(3)
        if table[bucket_of(mac)] == head.name:
            found.append(mac)
    return found


async def offer_from(relay: Relay, mac: bytes, xid: int) -> tuple[IPv4Address, str] | None:
    relay.discover(mac, xid)
    for packet, source in await relay.replies(wait=0.3, enough=1):
        if packet.xid == xid and packet.message_type == OFFER:
            return packet.yiaddr, source
    return None


async def bind(relay: Relay, heads: dict[str, Head], mac: bytes, xid: int) -> IPv4Address:
    offered = await offer_from(relay, mac, xid)
    assert offered is not None, mac.hex()
    ip, server = offered
    request = wire([(53, b"\x03"), (54, IPv4Address(server).packed), (50, ip.packed)],
                   xid=xid, chaddr=mac, giaddr=relay.ip)
    relay.send_to(heads[server], request)
    acks = [p for p, _ in await relay.replies(wait=2.0, enough=1) if p.message_type == ACK]
    assert [a.yiaddr for a in acks] == [ip], mac.hex()
    return ip


async def test_a_head_cut_from_etcd_fences_and_rejoins_without_moving_a_lease(
        cut_pair: tuple[Head, Head, Relay, StoreLink]) -> None:
    one, two, relay, link = cut_pair
    by_ip = {one.ip: one, two.ip: two}
    clients = macs_of(one, BOUND_CLIENTS // 2) + macs_of(two, BOUND_CLIENTS // 2)
    bound = {mac: await bind(relay, by_ip, mac, xid) for xid, mac in enumerate(clients, 1)}
    before = {kv.key: kv.mod_revision for kv in (await two.store.range(keys.LEASES)).items}
    assert len(before) == BOUND_CLIENTS
    table = one.membership.table

    link.cut()
    cut_at = time.monotonic()
    fenced_in = await until(lambda: one.membership.fenced is not None, "head-one fenced")
    assert fenced_in < one.membership.ttl + 1.0, f"fenced only after {fenced_in:.2f} s"
    newcomer = macs_of(one, 1)[0]
    xid = 100
    while True:
        xid += 1
        offered = await offer_from(relay, newcomer, xid)
        if offered is not None:
            assert offered[1] == two.ip, "the cut head offered a new lease"
            break
        assert time.monotonic() - cut_at < BOUND, "head-two never took head-one's share"
    took_over = time.monotonic() - cut_at
    assert one.dhcp.counters["offer_withheld:fenced"] + one.dhcp.counters[
        "offer_withheld:store_down"] >= 1
    print(f"head-one fenced {fenced_in:.2f} s after the cut; head-two offered to its client "
          f"{took_over:.2f} s after it")

    link.heal()
    healed = await until(lambda: one.membership.fenced is None
                         and len(one.membership.live) == len(two.membership.live) == 2
                         and one.membership.table == two.membership.table == table,
                         "head-one a member again, the split as before")
    print(f"head-one a member again, the split restored, {healed:.2f} s after the heal")
    for mac, ip in bound.items():
        owner = one if table[bucket_of(mac)] == one.name else two
        xid += 1
        offered = await offer_from(relay, mac, xid)
        assert offered == (ip, owner.ip), mac.hex()
    after = {kv.key: kv.mod_revision for kv in (await two.store.range(keys.LEASES)).items}
    assert {k: after.get(k) for k in before} == before, "a bound client's lease changed"
