"""A node reserved an address outside the subnet its request came from is not offered it (the
REQUEST would be NAKed and the node would loop): counted, logged once, and the node is offered
its address again once the reservation is fixed. Over loopback with a relay socket."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest

from provisioner.nodes.model import MacAddress, Node
from tests.dhcp.loopback import DISCOVER, NETWORK, OFFER, Factory, Loopback, until

MAC = "02:00:00:00:0a:01"


async def _reserve(lab: Loopback, ip: str) -> None:
    node = Node(MacAddress(MAC), "rack9n01", ip=ipaddress.IPv4Address(ip))
    existing = lab.inventory.node_by_mac(MacAddress(MAC))
    if existing is None:
        await lab.inventory.add_node(node)
    else:
        await lab.inventory.update_node(MAC, lambda cur: dataclasses.replace(cur, ip=node.ip))

    async def cached() -> bool:
        cur = lab.inventory.node_by_mac(MacAddress(MAC))
        return cur is not None and cur.ip == node.ip

    await until(cached, "the reservation is in the cache", lambda: "")


async def test_a_reservation_outside_the_relayed_subnet_is_not_offered(
        loopback: Factory, caplog: pytest.LogCaptureFixture) -> None:
    lab = await loopback()
    await _reserve(lab, "10.99.0.5")  # another rack's subnet: not the relay's 10.77.0.0/24
    with caplog.at_level(logging.WARNING, logger="provisioner.dhcp"):
        for xid in range(3):
            lab.send(lab.request(DISCOVER, MAC, xid=0x90 + xid))
        await lab.counted("ignored:reservation_elsewhere", 3)
    assert lab.server.counters["sent:offer"] == 0
    lab.nothing_queued()
    lines = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    assert len(lines) == 1 and "rack9n01" in lines[0] and str(NETWORK) in lines[0]

    await _reserve(lab, "10.77.0.50")  # fixed: offered its address at once
    lab.send(lab.request(DISCOVER, MAC, xid=0x99))
    offer = await lab.reply()
    assert (offer.message_type, offer.yiaddr) == (OFFER, ipaddress.IPv4Address("10.77.0.50"))
