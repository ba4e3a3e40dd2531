"""Unit tests of the pure parts added for a hostile provisioning network, and of discovery's
bounds with a hand-moved clock: the sighting table (proxy mode), the log rate limit, the trust
in option 82, and the expiry of discovered nodes that were never accepted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.config import DhcpSettings, SubnetSettings, load_settings
from provisioner.dhcp.packet import DhcpPacket
from provisioner.dhcp.server import DhcpServer
from provisioner.dhcp.sightings import Sightings, sighted_address
from provisioner.dhcp.subnets import relay_info_trusted, without_relay_info
from provisioner.errors import ConfigError
from provisioner.inventory.repository import Inventory
from provisioner.limits import OncePer
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.store.memory import MemoryStore

MAC = MacAddress("02:00:00:00:0a:01")
ZERO = IPv4Address(0)
AGENT_INFO = b"\x01\x07sw1/p07"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _request(*, ciaddr: IPv4Address = ZERO, giaddr: IPv4Address = ZERO, mtype: int = 3,
             **options: bytes) -> DhcpPacket:
    opts = {53: bytes((mtype,)), **{int(k.removeprefix("o")): v for k, v in options.items()}}
    return DhcpPacket(op=1, xid=7, chaddr=MAC.packed, ciaddr=ciaddr, giaddr=giaddr, options=opts)


# -- sightings ------------------------------------------------------------------------------


def test_the_sighted_address_is_option_50_else_ciaddr_else_the_4011_source() -> None:
    source = IPv4Address("10.0.0.77")
    asked = IPv4Address("10.0.0.5")
    assert sighted_address(_request(o50=asked.packed), pxe_port=False, source=source) == asked
    held = IPv4Address("10.0.0.6")
    # A client that holds its address (ciaddr) means it, whatever a stray 50 says.
    assert sighted_address(_request(ciaddr=held, o50=asked.packed), pxe_port=False,
                           source=source) == held
    assert sighted_address(_request(), pxe_port=True, source=source) == source
    # Not on 4011 and nothing in the packet: no sighting (a broadcast source says nothing).
    assert sighted_address(_request(), pxe_port=False, source=source) is None
    # A DISCOVER's option 50 is a wish, not an address in use.
    assert sighted_address(_request(mtype=1, o50=asked.packed), pxe_port=False,
                           source=source) is None
    assert sighted_address(_request(o50=IPv4Address("255.255.255.255").packed),
                           pxe_port=False, source=None) is None


def test_sightings_are_bounded_in_size_and_age() -> None:
    table = Sightings(limit=3, ttl=100.0)
    macs = [MacAddress(f"02:00:00:00:0b:{i:02x}") for i in range(5)]
    for i, mac in enumerate(macs):
        table.saw(mac, IPv4Address(f"10.0.1.{i + 1}"), now=float(i))
    assert len(table) == 3
    assert table.address_of(macs[0], now=5.0) is None  # the oldest were forgotten first
    assert table.address_of(macs[4], now=5.0) == IPv4Address("10.0.1.5")
    table.saw(macs[2], IPv4Address("10.0.1.99"), now=50.0)  # seen again: newer address
    assert table.address_of(macs[2], now=60.0) == IPv4Address("10.0.1.99")
    assert table.expire(now=103.5) == 1  # macs[3] (seen at 3.0) is past 100 s
    assert table.address_of(macs[4], now=104.0) is None  # past its age on lookup
    assert table.address_of(macs[2], now=149.0) == IPv4Address("10.0.1.99")
    assert len(table) == 1


def test_once_per_lets_one_line_through_per_key_per_period() -> None:
    limit = OncePer(60.0, limit=2)
    assert [limit.due("a", t) for t in (0.0, 1.0, 59.9, 60.0)] == [True, False, False, True]
    assert limit.due("b", 1.0) and limit.due("c", 2.0)  # "a" is forgotten (limit 2)...
    assert limit.due("a", 61.0)  # ...so it is due again


# -- option 82 ------------------------------------------------------------------------------


def test_option_82_is_believed_only_from_a_listed_relay() -> None:
    relay = IPv4Address("10.1.0.1")
    trusted = frozenset({relay})
    assert relay_info_trusted(_request(giaddr=relay, o82=AGENT_INFO), trusted)
    assert not relay_info_trusted(_request(o82=AGENT_INFO), trusted)  # giaddr 0: the client
    assert not relay_info_trusted(_request(giaddr=IPv4Address("10.1.0.2"), o82=AGENT_INFO),
                                  trusted)
    packet = _request(o82=AGENT_INFO, o12=b"host")
    stripped = without_relay_info(packet)
    assert 82 not in stripped.options and stripped.options[12] == b"host"
    assert (stripped.xid, stripped.chaddr) == (packet.xid, packet.chaddr)


# -- discovery bounds (no sockets: the server is not started) -------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[DhcpServer, Inventory, Clock]]:
    store = MemoryStore()
    inventory = Inventory(store)
    await inventory.start()
    clock = Clock()
    subnet = SubnetSettings(network="10.77.0.0/24", pool_start="10.77.0.10",
                            pool_end="10.77.0.200")
    settings = DhcpSettings(mode="full", server_ip="10.77.0.1", subnets=(subnet,),
                            discovery=True, discovery_ttl=3600)
    dhcp = DhcpServer(settings, inventory, clock=clock)
    yield dhcp, inventory, clock
    await inventory.stop()
    await store.close()


async def _discovered(inventory: Inventory, mac: MacAddress, name: str,
                      state: NodeState = NodeState.DISCOVERED) -> None:
    await inventory.settle(await inventory.add_node(Node(mac, name, state=state)))


async def test_a_discovered_node_not_seen_for_the_ttl_is_deleted(
        server: tuple[DhcpServer, Inventory, Clock], caplog: pytest.LogCaptureFixture) -> None:
    dhcp, inventory, clock = server
    discovery = dhcp.answers.discovery
    stale, fresh = MacAddress("02:00:00:00:0c:01"), MacAddress("02:00:00:00:0c:02")
    accepted = MacAddress("02:00:00:00:0c:03")
    await _discovered(inventory, stale, "node001")
    await _discovered(inventory, fresh, "node002")
    await _discovered(inventory, accepted, "node003", NodeState.REGISTERED)
    # Found at start (e.g. after a restart): each gets a whole ttl from now.
    assert await discovery.expire() == []
    clock.now += 3000
    discovery.seen(fresh)  # fresh sends a DISCOVER again
    clock.now += 599
    assert await discovery.expire() == []  # 3599 s: not yet
    clock.now += 1
    with caplog.at_level(logging.INFO, "provisioner.dhcp.discovery"):
        expired = await discovery.expire()
    assert [n.mac for n in expired] == [stale]
    assert f"discovered node node001 ({stale}) not accepted" in caplog.text
    assert {n.mac for n in await inventory.list_nodes()} == {fresh, accepted}
    assert dhcp.counters["discovery_expired"] == 1
    clock.now += 3600  # fresh, unseen since; an accepted node never expires
    assert [n.mac for n in await discovery.expire()] == [fresh]
    assert [n.mac for n in await inventory.list_nodes()] == [accepted]


async def test_a_node_accepted_meanwhile_is_not_expired(
        server: tuple[DhcpServer, Inventory, Clock]) -> None:
    dhcp, inventory, clock = server
    await _discovered(inventory, MAC, "node001")
    assert await dhcp.answers.discovery.expire() == []
    clock.now += 7200
    # Accepted in the store after the cache was read: the delete looks again first.
    await inventory.update_node(MAC.value,
                                lambda n: n.with_changes(state=NodeState.REGISTERED))
    assert await dhcp.answers.discovery.expire() == []
    assert (await inventory.get_node(MAC.value)).value.state is NodeState.REGISTERED


def test_the_discovery_settings_are_checked(tmp_path: Path) -> None:
    env = {"PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_CONFIG": ""}
    defaults = load_settings(env=env).dhcp
    assert (defaults.auto_accept, defaults.discovery_limit, defaults.discovery_ttl,
            defaults.trusted_relays) == (False, 1024, 86400, ())
    with pytest.raises(ConfigError, match=r"dhcp\.trusted_relays"):
        load_settings(env={**env, "PROVISIONER_DHCP_TRUSTED_RELAYS": "10.0.0.300"})
    with pytest.raises(ConfigError, match="discovery_ttl"):
        load_settings(env={**env, "PROVISIONER_DHCP_DISCOVERY_TTL": "0"})
