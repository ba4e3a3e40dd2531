"""Two heads on one etcd, each a real DHCP server on its own loopback address, reached through
a relay agent that forwards every DISCOVER to both (as a broadcast reaches both on a segment):
each head answers only the clients of its buckets; when one dies (its renewals and answers stop,
nothing revoked, as after SIGKILL) a client of its share is answered by the other within the
ttl and the watch's delay."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp.packet import decode
from provisioner.ha.buckets import bucket_of
from tests.dhcp.test_vectors import wire
from tests.ha.heads import Head, Relay, namespace, net_base
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

OFFER, ACK = 2, 5
BOUND = 15.0  # s: generous: ttl 3 s + the watch, on a shared, noisy machine
CLIENTS = 48


def client_of(table: tuple[str, ...], head: str) -> bytes:
    """A random MAC whose bucket is `head`'s in `table`."""
    while True:
        mac = bytes.fromhex("525400") + secrets.token_bytes(3)
        if table[bucket_of(mac)] == head:
            return mac


@pytest.fixture
async def pair(etcd_server: EtcdServer) -> AsyncIterator[tuple[Head, Head, Relay]]:
    base, space = net_base(), namespace()
    relay_ip = f"{base}.2"
    heads = [Head.make(name, f"{base}.{last}", etcd_server.endpoint, space, relay_ip)
             for name, last in (("head-one", 1), ("head-two", 3))]
    relay = Relay(relay_ip, heads)
    try:
        for head in heads:
            await head.start()
        deadline = time.monotonic() + BOUND
        while any(len(h.membership.live) < 2 for h in heads):
            assert time.monotonic() < deadline, "the heads did not see each other"
            await asyncio.sleep(0.05)
        yield heads[0], heads[1], relay
    finally:
        for head in heads:
            await head.close()
        relay.close()


async def test_each_head_answers_only_the_clients_of_its_buckets(
        pair: tuple[Head, Head, Relay]) -> None:
    one, two, relay = pair
    assert one.membership.table == two.membership.table
    macs = [bytes.fromhex("525400") + secrets.token_bytes(3) for _ in range(CLIENTS)]
    for xid, mac in enumerate(macs, 1):
        relay.discover(mac, xid)
    replies = await relay.replies(wait=2.0)
    offers = {p.xid: source for p, source in replies if p.message_type == OFFER}
    assert len(replies) == len(offers) == CLIENTS, "one OFFER per client, from one head"
    by_ip = {one.ip: one.name, two.ip: two.name}
    for xid, mac in enumerate(macs, 1):
        assert by_ip[offers[xid]] == one.membership.table[bucket_of(mac)], mac.hex()
    ignored = one.dhcp.counters["ignored:other_head"] + two.dhcp.counters["ignored:other_head"]
    assert ignored == CLIENTS
    print(f"head-one answered {sum(1 for s in offers.values() if s == one.ip)} and head-two "
          f"{sum(1 for s in offers.values() if s == two.ip)} of {CLIENTS} clients")


async def test_a_renewal_is_answered_by_the_head_it_reaches_whatever_the_buckets(
        pair: tuple[Head, Head, Relay]) -> None:
    """A RENEWING REQUEST is unicast to the server that bound the client (RFC 2131 4.4.5),
    which may no longer own the client's bucket (the buckets moved back after a failover):
    the head it reaches ACKs it when the store shows the lease as the client's."""
    one, two, relay = pair
    mac = client_of(one.membership.table, two.name)
    relay.discover(mac, 7)
    offers = [p for p, source in await relay.replies(wait=2.0, enough=1)
              if p.message_type == OFFER and source == two.ip]
    assert len(offers) == 1
    ip = offers[0].yiaddr
    relay.send_to(two, wire([(53, b"\x03"), (54, IPv4Address(two.ip).packed), (50, ip.packed)],
                            xid=8, chaddr=mac, giaddr=relay.ip))
    assert [p.message_type for p, _ in await relay.replies(wait=2.0, enough=1)] == [ACK]
    ignored = one.dhcp.counters["ignored:other_head"]  # head-one ignored the DISCOVER
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((str(ip), 68))  # the bound client itself, at its leased address
        client.setblocking(False)
        client.sendto(wire([(53, b"\x03")], xid=9, chaddr=mac, ciaddr=str(ip)),
                      (one.ip, one.port))
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(client, 4096), BOUND)
    answer = decode(data)
    assert (answer.xid, answer.message_type, answer.yiaddr) == (9, ACK, ip)
    assert one.dhcp.counters["ignored:other_head"] == ignored == 1


async def test_a_dead_heads_clients_are_answered_by_the_other_within_the_ttl(
        pair: tuple[Head, Head, Relay]) -> None:
    one, two, relay = pair
    mac = client_of(one.membership.table, two.name)
    await two.die()
    died = time.monotonic()
    xid = 0
    while True:
        xid += 1
        relay.discover(mac, xid)
        got = [p for p, source in await relay.replies(wait=0.2)
               if source == one.ip and p.message_type == OFFER]
        if got:
            break
        assert time.monotonic() - died < BOUND, f"no OFFER from head-one in {BOUND:g} s"
    gap = time.monotonic() - died
    print(f"failover gap: first OFFER from head-one {gap:.2f} s after head-two died "
          f"(ttl {one.membership.ttl:g} s)")
    assert one.membership.share() == 256
