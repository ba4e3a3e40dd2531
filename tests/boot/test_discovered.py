"""The boot plane and discovery: a discovered node waits for acceptance (its script says so,
its overlay and kickstart are refused), boots once accepted or at once with [dhcp]
auto_accept; and in ProxyDHCP mode a node's files are bound to the address it showed the DHCP
glue in its PXE exchange (service.py's wiring of dhcp/sightings.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisioner.boot.binding import AddressBinding
from provisioner.dhcp.packet import DhcpPacket, encode
from provisioner.dhcp.server import DhcpServer
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.service import Appliance
from tests.api.conftest import api_settings, publish_image
from tests.boot.test_routes import MAC, Plane, _plane

PXE = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00"}


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    found, server = await _plane(tmp_path, None)
    try:
        yield found
    finally:
        await found.http.aclose()
        await server.close()
        await found.inventory.stop()


async def _state(plane: Plane, state: NodeState) -> None:
    for _ in range(200):  # the routes read the watch-fed cache
        cached = plane.inventory.node_by_mac(MAC)
        if cached is not None and cached.state is state:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{MAC} never became {state}")


async def test_a_discovered_node_waits_until_accepted_then_boots(plane: Plane) -> None:
    publish_image(plane.catalog, "compute")
    await plane.add(Node(MAC, "node001", image="compute", state=NodeState.DISCOVERED))
    script = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert script.status_code == 200 and script.text.startswith("#!ipxe")
    assert "discovered, waiting for `provisioner node accept node001`" in script.text
    assert "prov-kernel" not in script.text
    assert f"chain --replace --autofree http://10.0.0.1/boot/{MAC}.ipxe" in script.text
    for path in (f"/boot/nodes/{MAC}/overlay.cpio.xz", f"/boot/nodes/{MAC}/install.ks"):
        refused = await plane.http.get(path)
        assert refused.status_code == 403 and "provisioner node accept node001" in refused.text
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.DISCOVERED
    assert await plane.inventory.list_events(MAC) == []  # waiting changes nothing

    accepted = await plane.plane.lifecycle.accept(MAC, by="test")
    assert accepted.state is NodeState.REGISTERED
    await _state(plane, NodeState.REGISTERED)
    booting = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert booting.status_code == 200 and "prov-kernel" in booting.text
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.PROVISIONING
    await _state(plane, NodeState.PROVISIONING)
    overlay = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert overlay.status_code == 200
    kinds = [e.kind for e in await plane.inventory.list_events(MAC)]
    assert kinds == ["registered", "provisioning", "overlay_served"]


async def test_with_auto_accept_a_discovered_node_boots_at_once(plane: Plane) -> None:
    settings = plane.plane.settings
    plane.plane.settings = dataclasses.replace(
        settings, dhcp=dataclasses.replace(settings.dhcp, auto_accept=True))
    publish_image(plane.catalog, "compute")
    await plane.add(Node(MAC, "node001", image="compute", state=NodeState.DISCOVERED))
    script = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert script.status_code == 200 and "prov-kernel" in script.text
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.PROVISIONING


def _pxe_request(mac: MacAddress, requested: IPv4Address) -> bytes:
    """A PXE client's broadcast REQUEST to the site's DHCP server (its option 54)."""
    options = {53: b"\x03", 50: requested.packed, 54: IPv4Address("192.0.2.1").packed, **PXE}
    return encode(DhcpPacket(op=1, xid=0x51, chaddr=mac.packed, flags=0x8000, options=options))


async def test_in_proxy_mode_the_files_go_to_the_address_seen_in_the_pxe_exchange(
        tmp_path: Path, plane: Plane) -> None:
    settings = api_settings(tmp_path / "appliance", PROVISIONER_DHCP_MODE="proxy")
    appliance = Appliance(settings)
    try:
        dhcp = DhcpServer(settings.dhcp, plane.inventory)  # the glue; no socket needed here
        appliance.dhcp = dhcp
        plane.plane.binding = AddressBinding(appliance._leased)  # as service.py wires it
        publish_image(plane.catalog, "compute")
        await plane.add(Node(MAC, "node001", image="compute"))  # no static address
        # Nothing seen yet: there is no address to bind its files to.
        assert (await plane.http.get(f"/boot/{MAC}.ipxe")).status_code == 403
        # Its REQUEST for a site lease on 127.0.0.1 (the address this test speaks from).
        dhcp.handle(_pxe_request(MAC, IPv4Address("127.0.0.1")), ("0.0.0.0", 68),
                    None, pxe_port=False)  # type: ignore[arg-type]
        assert dhcp.counters["proxy_sightings"] == 1
        script = await plane.http.get(f"/boot/{MAC}.ipxe")
        assert script.status_code == 200 and "prov-kernel" in script.text
        await _state(plane, NodeState.PROVISIONING)
        # The node moves to another address: from here it is a stranger again.
        dhcp.handle(_pxe_request(MAC, IPv4Address("10.9.9.9")), ("0.0.0.0", 68),
                    None, pxe_port=False)  # type: ignore[arg-type]
        refused = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
        assert refused.status_code == 403 and "10.9.9.9" in refused.text
    finally:
        await appliance.store.close()
