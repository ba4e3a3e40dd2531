"""Subnet selection by giaddr (RFC 2131 section 4.3.1) and address choice."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from provisioner.dhcp.subnets import Pool, Subnet, pick_address, subnet_for
from tests.dhcp.test_policy import NODE_MAC, RELAY, SERVER, ip, packet
from tests.dhcp.test_replies import SUBNET

ATTACHED = Subnet(IPv4Network("10.0.0.0/24"), Pool(ip("10.0.0.10"), ip("10.0.0.99")), None, {})
RELAYED = Subnet(IPv4Network("10.2.0.0/24"), Pool(ip("10.2.0.10"), ip("10.2.0.99")), RELAY, {})
# Relayed through 10.2.0.1 as well, but naming another relay: giaddr's network only.
CONTAINS = Subnet(IPv4Network("10.2.0.0/16"), Pool(ip("10.2.1.10"), ip("10.2.1.99")),
                  ip("10.9.9.9"), {})


@pytest.mark.parametrize(("subnets", "giaddr", "expected"), [
    ([ATTACHED, RELAYED], None, ATTACHED),  # not relayed: the attached network
    ([RELAYED, ATTACHED], str(RELAY), RELAYED),  # relayed: the subnet naming giaddr
    ([CONTAINS, RELAYED], str(RELAY), RELAYED),  # naming giaddr wins over containing it
    ([ATTACHED, CONTAINS], str(RELAY), CONTAINS),  # else the network holding giaddr
    ([RELAYED], None, None),  # no attached network configured
    ([ATTACHED], "192.0.2.1", None),  # a relay for a network we do not serve
])
def test_subnet_for(subnets: list[Subnet], giaddr: str | None, expected: Subnet | None) -> None:
    fields = {} if giaddr is None else {"giaddr": giaddr}
    assert subnet_for(subnets, packet(1, **fields)) is expected


def test_pool_holds_its_range_only() -> None:
    pool = Pool(ip("10.0.0.10"), ip("10.0.0.12"))
    assert [ip(f"10.0.0.{n}") in pool for n in (9, 10, 12, 13)] == [False, True, True, False]
    assert "10.0.0.10" not in pool  # an address, not its text


def test_subnet_options() -> None:
    assert SUBNET[1] == bytes([255, 255, 255, 0])
    assert SUBNET[28] == bytes([10, 0, 0, 255])
    assert SUBNET[3] == SERVER.packed
    assert SUBNET[15] == b"cluster"
    assert SUBNET[26] == b"\x23\x28"
    assert 42 not in SUBNET



def test_pick_address() -> None:
    first, last = ip("10.0.0.10"), ip("10.0.0.19")
    taken = {ip("10.0.0.12")}
    assert pick_address(first, last, taken, mac=NODE_MAC, requested=ip("10.0.0.11")) == ip(
        "10.0.0.11"
    )
    chosen = pick_address(first, last, taken, mac=NODE_MAC, requested=ip("10.0.0.12"))
    assert chosen is not None
    assert first <= chosen <= last
    assert chosen not in taken
    assert pick_address(first, last, set(), mac=NODE_MAC) == pick_address(
        first, last, set(), mac=NODE_MAC
    )  # stable for a MAC
    outside = pick_address(first, last, set(), mac=NODE_MAC, requested=ip("10.0.1.1"))
    assert outside is not None
    assert outside != ip("10.0.1.1")


def test_pick_address_fills_the_pool_then_says_none() -> None:
    first, last = ip("10.0.0.10"), ip("10.0.0.13")
    taken: set[IPv4Address] = set()
    for _ in range(4):
        chosen = pick_address(first, last, taken, mac=NODE_MAC)
        assert chosen is not None
        taken.add(chosen)
    assert taken == {ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12"), ip("10.0.0.13")}
    assert pick_address(first, last, taken, mac=NODE_MAC) is None
    assert pick_address(last, first, set(), mac=NODE_MAC) is None
