"""The rendered boot-plane routes on a real BootHttpServer (loopback), with the shipped
templates, a real overlay builder and a published image, end to end through the callback."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import lzma
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.boot.binding import AddressBinding
from provisioner.boot.overlay import TOKEN_PATH, OverlayBuilder
from provisioner.boot.routes import BootPlane
from provisioner.boot.server import BootHttpServer
from provisioner.images.format import cpio
from provisioner.images.format.catalog import ImageCatalog
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.render.environment import Renderer
from provisioner.security.audit import AuditLog
from provisioner.security.tokens import BootTokens
from provisioner.store.memory import MemoryStore
from tests.api.conftest import api_settings, publish_image

MAC = MacAddress("52:54:00:00:00:01")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
ELSEWHERE = ipaddress.IPv4Address("10.9.9.9")


@dataclass
class Plane:
    http: httpx.AsyncClient
    plane: BootPlane
    inventory: Inventory
    catalog: ImageCatalog
    leases: dict[MacAddress, ipaddress.IPv4Address]

    async def add(self, node: Node) -> None:
        revision = await self.inventory.add_node(node)
        await self.inventory.settle(revision)


async def _plane(tmp_path: Path, site: Path | None) -> tuple[Plane, BootHttpServer]:
    settings = api_settings(tmp_path)
    store = MemoryStore()
    inventory = Inventory(store)
    await inventory.start()
    renderer = Renderer(site)
    catalog = ImageCatalog(settings.images_dir)
    # Every node holds a lease on the loopback address the test client speaks from, unless
    # a test moves it elsewhere: then the client is a stranger to that node.
    leases: dict[MacAddress, ipaddress.IPv4Address] = {}
    plane = BootPlane(settings, inventory, Lifecycle(inventory), BootTokens(store),
                      AuditLog(store), renderer, OverlayBuilder(renderer), catalog,
                      boot_base="http://10.0.0.1", api_base="http://10.0.0.1:8080",
                      binding=AddressBinding(lambda mac: leases.get(mac, LOOPBACK)))
    server = BootHttpServer(settings.images_dir)
    plane.register(server)
    await server.start("127.0.0.1", 0)
    host, port = server.address
    client = httpx.AsyncClient(base_url=f"http://{host}:{port}")
    return Plane(client, plane, inventory, catalog, leases), server


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    found, server = await _plane(tmp_path, None)
    try:
        yield found
    finally:
        await found.http.aclose()
        await server.close()
        await found.inventory.stop()


async def test_an_unknown_mac_gets_a_script_that_waits_and_asks_again(plane: Plane) -> None:
    response = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert response.status_code == 200 and response.text.startswith("#!ipxe")
    assert "not a registered node" in response.text
    assert f"chain --replace --autofree http://10.0.0.1/boot/{MAC}.ipxe" in response.text
    junk = await plane.http.get("/boot/not-a-mac.ipxe")
    assert junk.status_code == 404


async def test_a_node_without_an_image_waits_and_stays_registered(plane: Plane) -> None:
    await plane.add(Node(MAC, "node001"))
    response = await plane.http.get(f"/boot/{MAC.dashed}.ipxe")
    assert response.status_code == 200 and "has no image to boot" in response.text
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.REGISTERED
    await plane.add(Node(MacAddress("52:54:00:00:00:02"), "node002", image="missing"))
    missing = await plane.http.get("/boot/52:54:00:00:00:02.ipxe")
    assert "has no image to boot" in missing.text


async def test_the_full_boot_path_script_overlay_token_callback(plane: Plane) -> None:
    publish_image(plane.catalog, "compute")
    await plane.add(Node(MAC, "node001", image="compute", settings={"kernel_args": "quiet"}))
    script = await plane.http.get(f"/boot/{MAC}.ipxe")
    assert script.status_code == 200, script.text
    assert "set prov-kernel http://10.0.0.1/boot/images/compute/1/vmlinuz" in script.text
    assert f"set prov-overlay http://10.0.0.1/boot/nodes/{MAC}/overlay.cpio.xz" in script.text
    assert "quiet" in script.text
    node = (await plane.inventory.get_node("node001")).value
    assert node.state is NodeState.PROVISIONING
    kernel = await plane.http.get("/boot/images/compute/1/vmlinuz")
    assert kernel.content == b"kernel " * 100

    overlay = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert overlay.status_code == 200
    assert overlay.headers["content-type"] == "application/octet-stream"
    files = {e.path: e for e in _unpack_overlay(overlay.content)}
    token = files[TOKEN_PATH].data.decode()
    assert files[TOKEN_PATH].mode & 0o777 == 0o600
    env = files["etc/provisioner/node.env"].data.decode()
    assert "http://10.0.0.1:8080/node/v1/booted" in env and token not in env

    ctx = ApiContext.build(plane.plane.settings, plane.inventory, lifecycle=plane.plane.lifecycle)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                                 base_url="http://api") as api:
        body = {"mac": MAC.value, "token": token, "image": "compute", "version": "1",
                "facts": {"cpus": 1, "memory_mib": 256}}
        first = await api.post("/node/v1/booted", json=body)
        assert first.status_code == 200 and first.json()["state"] == "ready"
        assert (await api.post("/node/v1/booted", json=body)).status_code == 401
    kinds = [e.kind for e in await plane.inventory.list_events(MAC)]
    assert kinds == ["provisioning", "overlay_served", "booted", "ready"]


def _unpack_overlay(data: bytes) -> list[cpio.Entry]:
    """The cached xz part, then the uncompressed token archive (as the kernel reads them)."""
    decompressor = lzma.LZMADecompressor()
    first = decompressor.decompress(data)
    return cpio.unpack(first) + cpio.unpack(decompressor.unused_data.lstrip(b"\0"))


async def test_the_kickstart_is_served_only_while_provisioning(plane: Plane) -> None:
    publish_image(plane.catalog, "compute")
    await plane.add(Node(MAC, "node001", image="compute"))
    refused = await plane.http.get(f"/boot/nodes/{MAC}/install.ks")
    assert refused.status_code == 403 and "only while it is provisioning" in refused.text
    await plane.http.get(f"/boot/{MAC}.ipxe")
    for _ in range(100):  # the route reads the watch-fed cache
        cached = plane.inventory.node_by_mac(MAC)
        if cached is not None and cached.state is NodeState.PROVISIONING:
            break
        await asyncio.sleep(0.01)
    kickstart = await plane.http.get(f"/boot/nodes/{MAC}/install.ks")
    assert kickstart.status_code == 200, kickstart.text
    assert "install kickstart for node001" in kickstart.text
    unknown = await plane.http.get("/boot/nodes/52:54:00:00:00:09/install.ks")
    assert unknown.status_code == 404


async def test_a_broken_template_fails_that_node_only(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "ipxe").mkdir(parents=True)
    (site / "ipxe" / "broken.ipxe.j2").write_text("#!ipxe\n{{ node.nope.deeper }}\n")
    found, server = await _plane(tmp_path, site)
    try:
        publish_image(found.catalog, "compute")
        await found.add(Node(MAC, "node001", image="compute",
                             settings={"ipxe_script": "ipxe/broken.ipxe.j2"}))
        await found.add(Node(MacAddress("52:54:00:00:00:02"), "node002", image="compute"))
        broken = await found.http.get(f"/boot/{MAC}.ipxe")
        assert broken.status_code == 500
        assert broken.text.count("\n") == 1 and "broken.ipxe.j2:2" in broken.text
        assert (await found.inventory.get_node("node001")).value.state is NodeState.FAILED
        events = await found.inventory.list_events(MAC)
        assert events[0].kind == "render_failed" and "broken.ipxe.j2" in events[0].detail["error"]
        fine = await found.http.get("/boot/52:54:00:00:00:02.ipxe")
        assert fine.status_code == 200 and "prov-kernel" in fine.text
    finally:
        await found.http.aclose()
        await server.close()
        await found.inventory.stop()


async def _booting(plane: Plane) -> None:
    publish_image(plane.catalog, "compute")
    await plane.add(Node(MAC, "node001", image="compute"))


async def test_a_stranger_gets_403_for_a_nodes_files_and_changes_nothing(
        plane: Plane, caplog: pytest.LogCaptureFixture) -> None:
    await _booting(plane)
    assert (await plane.http.get(f"/boot/{MAC}.ipxe")).status_code == 200
    before = [e.kind for e in await plane.inventory.list_events(MAC)]
    plane.leases[MAC] = ELSEWHERE  # the node now holds another address: we are a stranger
    caplog.set_level(logging.WARNING, logger="provisioner.boot.binding")
    for path in (f"/boot/{MAC}.ipxe", f"/boot/nodes/{MAC}/overlay.cpio.xz",
                 f"/boot/nodes/{MAC}/install.ks"):
        for method in ("GET", "HEAD"):
            refused = await plane.http.request(method, path)
            assert refused.status_code == 403, (method, path)
    assert "node001's own address (its address 10.9.9.9)" in refused.text or method == "HEAD"
    assert plane.plane.refusals.total == 6
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "127.0.0.1" in caplog.records[0].getMessage() and len(caplog.records) == 1
    assert [e.kind for e in await plane.inventory.list_events(MAC)] == before
    assert await plane.plane.tokens.store.get(keys.boot_token(MAC.value)) is None
    plane.leases[MAC] = LOOPBACK  # the node itself still gets its overlay
    assert (await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")).status_code == 200


async def test_head_of_the_script_and_overlay_has_no_side_effect(plane: Plane) -> None:
    await _booting(plane)
    await plane.inventory.update_node("node001", lambda n: n.with_changes(state=NodeState.READY))
    assert (await plane.http.head(f"/boot/{MAC}.ipxe")).status_code == 200
    node = (await plane.inventory.get_node("node001")).value
    assert node.state is NodeState.READY
    assert (await plane.http.get(f"/boot/{MAC}.ipxe")).status_code == 200  # a GET starts a boot
    assert (await plane.inventory.get_node("node001")).value.state is NodeState.PROVISIONING
    assert (await plane.http.head(f"/boot/nodes/{MAC}/overlay.cpio.xz")).status_code == 200
    assert await plane.plane.tokens.store.get(keys.boot_token(MAC.value)) is None


async def test_the_token_is_issued_once_per_boot(plane: Plane) -> None:
    await _booting(plane)
    refused = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert refused.status_code == 409 and "only while it is provisioning" in refused.text
    await plane.http.get(f"/boot/{MAC}.ipxe")
    first = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert first.status_code == 200
    again = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")  # iPXE retrying
    assert again.status_code == 200 and again.content == first.content
    plane.plane._overlays.clear()  # as after a restart: the token is out, the bytes are gone
    lost = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert lost.status_code == 409 and "already issued" in lost.text
    old_token = {e.path: e for e in _unpack_overlay(first.content)}[TOKEN_PATH].data
    await plane.http.get(f"/boot/{MAC}.ipxe")  # the next boot voids the old token
    second = await plane.http.get(f"/boot/nodes/{MAC}/overlay.cpio.xz")
    assert second.status_code == 200
    new_token = {e.path: e for e in _unpack_overlay(second.content)}[TOKEN_PATH].data
    assert new_token != old_token


async def test_only_boot_artifacts_are_served_from_an_image(plane: Plane) -> None:
    publish_image(plane.catalog, "compute")
    version = plane.catalog.resolve("compute")
    (version.path / "build.log").write_text("secret build output\n")
    for name, status in (("vmlinuz", 200), ("image.cpio.xz", 200), ("manifest.json", 404),
                         ("build.log", 404)):
        response = await plane.http.get(f"/boot/images/compute/1/{name}")
        assert response.status_code == status, name
    assert "secret" not in response.text
