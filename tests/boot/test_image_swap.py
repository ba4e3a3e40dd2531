"""An image version published (and activated) while a node is still downloading the old one.

The boot plane opens a version's file once per request and sends from that descriptor, and a
publish never writes into a version: it renames a complete new directory in, moves `current`,
and prunes by renaming old versions away before deleting them (images/format/catalog.py). So a
download under way finishes with exactly the old version's bytes, even when the publish prunes
that version, and the next boot script and download name the new one.

The appliance runs in-process with its real boot plane on loopback; the node's static address
is 127.0.0.1, so the script is served to the test's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
from pathlib import Path

import httpx

from provisioner.config import load_settings
from provisioner.images.format.catalog import ImageCatalog, describe_files
from provisioner.nodes.model import MacAddress, Node
from provisioner.service import Appliance

MAC = MacAddress("52:54:00:5a:00:01")
NAME = "swap"
SIZE = 32 * 1024 * 1024  # past what loopback's socket buffers hold: the send is still going
WAIT = 30.0


def _publish(catalog: ImageCatalog, image: bytes) -> str:
    """`provisioner image publish --activate` as another process does it: its own catalog."""
    staging = catalog.new_staging(NAME)
    (staging / "vmlinuz").write_bytes(b"kernel " * 100)
    (staging / "image.cpio.xz").write_bytes(image)
    (staging / "manifest.json").write_text(json.dumps({"files": describe_files(staging)}))
    return catalog.publish(staging, NAME, activate=True).version


async def test_a_download_under_way_keeps_its_version_and_the_next_boot_gets_the_new_one(
        tmp_path: Path) -> None:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "memory",
        "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_BOOT_LISTEN": "127.0.0.1",
        "PROVISIONER_BOOT_PORT": "0", "PROVISIONER_HANDOFF_KIND": "none"})
    old, new = os.urandom(SIZE), os.urandom(SIZE // 2)
    # keep=1: publishing the new version prunes the old one while it is being sent
    publisher = ImageCatalog(settings.images_dir, keep=1)
    assert _publish(publisher, old) == "1"
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        assert appliance.boot is not None
        revision = await appliance.inventory.add_node(
            Node(MAC, "swap-node", ip=ipaddress.IPv4Address("127.0.0.1"), image=NAME))
        await appliance.inventory.settle(revision)
        host, port = appliance.boot.address
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT))
        script = await client.get(f"/boot/{MAC.value}.ipxe")
        assert script.status_code == 200 and f"/boot/images/{NAME}/1/image.cpio.xz" in script.text

        got, digest = 0, hashlib.sha256()
        async with client.stream("GET", f"/boot/images/{NAME}/1/image.cpio.xz") as download:
            assert download.status_code == 200
            assert int(download.headers["content-length"]) == SIZE
            chunks = download.aiter_raw()
            while got < 1024 * 1024:  # read slowly: a node on a slow link
                chunk = await anext(chunks)
                got += len(chunk)
                digest.update(chunk)
                await asyncio.sleep(0.001)
            assert appliance.boot.counters["files"] == 0  # the server is still sending
            assert await asyncio.to_thread(_publish, publisher, new) == "2"
            assert not (settings.images_dir / NAME / "1").exists()  # pruned, mid-download
            async for chunk in chunks:
                got += len(chunk)
                digest.update(chunk)
        assert got == SIZE and digest.digest() == hashlib.sha256(old).digest()

        script = await client.get(f"/boot/{MAC.value}.ipxe")
        assert f"/boot/images/{NAME}/2/image.cpio.xz" in script.text, script.text
        image = await client.get(f"/boot/images/{NAME}/2/image.cpio.xz")
        assert image.status_code == 200 and image.content == new
        gone = await client.get(f"/boot/images/{NAME}/1/image.cpio.xz")
        assert gone.status_code == 404
