"""Discovery, option 82 trust and proxy-mode sightings through the real server glue: an
in-process DhcpServer on loopback with a fake relay agent socket (tests/dhcp/loopback.py's
Loopback), read through its counters, its log and its store."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from provisioner.nodes.model import MacAddress, NodeState
from tests.dhcp.loopback import ACK, AGENT_INFO, DISCOVER, OFFER, REQUEST, Factory, Loopback

pytestmark = pytest.mark.netns

PXE: dict[str, Any] = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": b"\x00\x00"}


async def test_beyond_the_discovery_limit_an_unknown_mac_gets_nothing(
        loopback: Factory, caplog: pytest.LogCaptureFixture) -> None:
    lab = await loopback(discovery=True, discovery_limit=2)
    for mac in ("02:00:00:00:0d:01", "02:00:00:00:0d:02"):
        lab.send(lab.request(DISCOVER, mac))
        assert (await lab.reply()).message_type == OFFER
    store = lab.inventory.store
    before = (await store.status()).revision
    extra = "02:00:00:00:0d:03"
    with caplog.at_level(logging.WARNING, "provisioner.dhcp.discovery"):
        lab.send(lab.request(DISCOVER, extra))
        lab.send(lab.request(DISCOVER, extra))  # its retransmission: counted, not logged
        await lab.counted("discovery_full", 2)
    lab.nothing_queued()
    assert (await store.status()).revision == before  # no store write for it
    nodes = await lab.inventory.list_nodes(state=NodeState.DISCOVERED)
    assert sorted(n.mac.value for n in nodes) == ["02:00:00:00:0d:01", "02:00:00:00:0d:02"]
    lines = [r.getMessage() for r in caplog.records if "discovery is full" in r.getMessage()]
    assert len(lines) == 1 and extra in lines[0], caplog.text
    # A discovered node is still answered (it is known now), limit or not.
    lab.send(lab.request(DISCOVER, "02:00:00:00:0d:01"))
    assert (await lab.reply()).message_type == OFFER


async def test_option_82_is_honoured_from_a_listed_relay_only(
        loopback: Factory, caplog: pytest.LogCaptureFixture) -> None:
    lab = await loopback(discovery=True, circuit_names=("sw1/p07=rack1-n07",), direct=True)
    listed = "02:00:00:00:0e:01"
    lab.send(lab.request(DISCOVER, listed, o82=AGENT_INFO))
    offer = await lab.reply()
    assert offer.options[82] == AGENT_INFO  # echoed to the relay that added it
    assert (await lab.inventory.get_node(listed)).value.name == "rack1-n07"
    # The same option from a client on the segment (giaddr 0): ignored, the rest answered.
    forged = "02:00:00:00:0e:02"
    with caplog.at_level(logging.WARNING, "provisioner.dhcp.server"):
        for _ in range(2):
            lab.send(lab.request(DISCOVER, forged, giaddr=IPv4Address(0), o82=AGENT_INFO))
        await lab.counted("relay_info_ignored", 2)
        node = await _node(lab, forged)
    assert node.name == "node001" and node.state is NodeState.DISCOVERED
    assert node.ip is not None and node.ip in IPv4Network("10.78.0.0/24")
    lines = [r.getMessage() for r in caplog.records if "ignored option 82" in r.getMessage()]
    assert len(lines) == 1 and forged in lines[0], caplog.text  # once a minute per source
    # Through a relay that is not listed: the option is ignored and so is the request.
    lab.send(lab.request(DISCOVER, "02:00:00:00:0e:03", giaddr=IPv4Address("10.77.0.9"),
                         o82=AGENT_INFO))
    await lab.counted("ignored:unknown_relay")
    assert lab.server.counters["relay_info_ignored"] == 3
    assert lab.server.trusted_relays == {lab.relay}


async def test_a_relay_in_trusted_relays_is_believed(loopback: Factory) -> None:
    lab = await loopback(discovery=True, circuit_names=("sw1/p07=rack1-n07",),
                     trusted_relays=("10.77.0.9",))
    lab.send(lab.request(DISCOVER, "02:00:00:00:0f:01", giaddr=IPv4Address("10.77.0.9"),
                         o82=AGENT_INFO))
    await lab.counted("discovered")
    assert (await _node(lab, "02:00:00:00:0f:01")).name == "rack1-n07"
    assert lab.server.counters["relay_info_ignored"] == 0


async def test_proxy_mode_remembers_the_address_each_pxe_client_showed(loopback: Factory) -> None:
    lab = await loopback(mode="proxy")
    mac = MacAddress("02:00:00:00:10:01")
    site_lease = IPv4Address("10.77.0.61")
    # The client's REQUEST to the site server (another option 54): not ours to answer, but
    # its option 50 is the address the client takes.
    lab.send(lab.request(REQUEST, mac.value, o50=site_lease.packed,
                         o54=IPv4Address("10.77.0.2").packed, **PXE))
    await lab.counted("proxy_sightings")
    lab.nothing_queued()
    assert lab.server.sightings.address_of(mac, lab.server._clock()) == site_lease
    # Then boot server discovery on 4011 from that address (ciaddr): answered, seen again.
    lab.send(lab.request(REQUEST, mac.value, ciaddr=site_lease, **PXE), port=4011)
    assert (await lab.reply()).message_type == ACK
    await lab.counted("proxy_sightings", 2)
    # A client that is not PXE is the site server's alone: nothing remembered.
    other = MacAddress("02:00:00:00:10:02")
    lab.send(lab.request(REQUEST, other.value, o50=IPv4Address("10.77.0.62").packed))
    await lab.counted("ignored:not_pxe")
    assert lab.server.sightings.address_of(other, lab.server._clock()) is None
    assert lab.server.counters["proxy_sightings"] == 2


async def _node(lab: Loopback, mac: str) -> Any:
    for _ in range(200):
        node = lab.inventory.node_by_mac(MacAddress(mac))
        if node is not None:
            return node
        await _sleep()
    pytest.fail(f"{mac} was not discovered: {dict(lab.server.counters)}")


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.025)


async def test_proxy_mode_discovers_pxe_clients_without_an_address(loopback: Factory) -> None:
    lab = await loopback(mode="proxy", discovery=True)
    mac = "02:00:00:00:11:01"
    lab.send(lab.request(DISCOVER, mac, **PXE))
    offer = await lab.reply()  # answered once stored: boot information, no address
    assert (offer.message_type, offer.yiaddr, offer.file) == (OFFER, IPv4Address(0),
                                                              b"undionly.kpxe")
    node = await _node(lab, mac)
    assert (node.name, node.state, node.ip) == ("node001", NodeState.DISCOVERED, None)
    assert lab.server.counters["discovered"] == 1
    lab.send(lab.request(DISCOVER, mac, **PXE))  # known now: answered at once, not added again
    assert (await lab.reply()).message_type == OFFER
    assert len(await lab.inventory.list_nodes()) == 1
