"""Who may use the boot plane's reserved connections (service.py's `_holds_lease`, wired into
the server's admission): a node's static address, its live lease in full mode, its sighting in
proxy mode; a stranger, an expired or released lease, or a sighting of another address may not."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.config import SubnetSettings
from provisioner.dhcp.server import DhcpServer
from provisioner.nodes.model import MacAddress, Node
from provisioner.service import Appliance
from tests.api.conftest import api_settings

MAC, OTHER = MacAddress("52:54:00:00:aa:01"), MacAddress("52:54:00:00:aa:02")


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    found = Appliance(api_settings(tmp_path, PROVISIONER_DHCP_MODE="proxy"))
    await found.inventory.start()
    try:
        yield found
    finally:
        await found.inventory.stop()
        await found.store.close()


async def test_in_proxy_mode_a_sighting_or_a_static_address_holds_a_slot(
        appliance: Appliance) -> None:
    appliance.dhcp = DhcpServer(appliance.settings.dhcp, appliance.inventory)  # no sockets
    assert not appliance._holds_lease("10.0.0.5")
    appliance.dhcp.sightings.saw(MAC, IPv4Address("10.0.0.5"), time.time())
    assert appliance._holds_lease("10.0.0.5")
    assert not appliance._holds_lease("10.0.0.6")
    assert not appliance._holds_lease("not an address")
    await appliance.inventory.add_node(Node(OTHER, "static1", ip=IPv4Address("10.0.0.7")))
    for _ in range(200):  # the static address is read from the watch-fed cache
        if appliance._holds_lease("10.0.0.7"):
            break
        await asyncio.sleep(0.01)
    assert appliance._holds_lease("10.0.0.7")


async def test_in_full_mode_a_live_bound_lease_holds_a_slot(appliance: Appliance) -> None:
    subnet = SubnetSettings(network="10.0.0.0/24")
    settings = dataclasses.replace(appliance.settings.dhcp, mode="full", subnets=(subnet,))
    appliance.settings = dataclasses.replace(appliance.settings, dhcp=settings)
    appliance.dhcp = DhcpServer(settings, appliance.inventory)
    await appliance.dhcp.leases.start()
    try:
        now = time.time()
        assert await appliance.dhcp.leases.bind(MAC, IPv4Address("10.0.0.20"), now, 3600)
        assert await appliance.dhcp.leases.bind(OTHER, IPv4Address("10.0.0.21"), now - 7200,
                                                3600)  # expired an hour ago
        assert appliance._holds_lease("10.0.0.20")
        assert not appliance._holds_lease("10.0.0.21")
        assert not appliance._holds_lease("10.0.0.22")
    finally:
        await appliance.dhcp.leases.stop()
