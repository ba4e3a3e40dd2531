"""Per-node overlays: unpacked with GNU cpio the way the kernel sees them (the xz stream, then
the plain cpio after it), checked for files, modes and the token, and for the cache keeping
secrets out of what it stores."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest

from provisioner.boot.overlay import OverlayBuilder, measure_render_and_pack, token_archive
from provisioner.errors import RenderError
from provisioner.images.build.kernel import KernelTree
from provisioner.images.format import cpio
from provisioner.nodes.model import Firmware, MacAddress, Node
from provisioner.render.environment import BootContext, Renderer
from tests.templates.bootimage import minimal_image
from tests.templates.cases import KEY, bios_context, uefi_context
from tests.templates.test_init_script import Callback


def split(data: bytes) -> tuple[bytes, bytes]:
    """(xz part, what follows it): `xz -dc` would stop at the first stream."""
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    decoder.decompress(data)
    assert decoder.eof
    rest = decoder.unused_data
    return data[: len(data) - len(rest)], rest


def gnu_cpio_extract(archive: bytes, into: Path) -> None:
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive,
                   cwd=into, check=True, timeout=30)


def test_overlay_unpacks_with_gnu_cpio(tmp_path: Path) -> None:
    data = OverlayBuilder(Renderer()).build(bios_context(token="tok-one"), node_revision=1)
    xz_part, rest = split(data)
    assert len(xz_part) % 4 == 0, "the token archive must start 4-byte aligned"
    assert rest.startswith(b"070701")
    gnu_cpio_extract(lzma.decompress(xz_part), tmp_path)
    gnu_cpio_extract(rest, tmp_path)
    assert (tmp_path / "etc/hostname").read_text() == "node001\n"
    assert (tmp_path / "root/.ssh/authorized_keys").read_text() == f"{KEY}\n"
    token = tmp_path / "etc/provisioner/token"
    assert token.read_text() == "tok-one"
    modes = {p: (tmp_path / p).stat().st_mode & 0o7777 for p in (
        "etc/hostname", "etc/provisioner/node.env", "root/.ssh/authorized_keys",
        "root/.ssh", "root", "etc", "etc/provisioner/token")}
    assert modes == {"etc/hostname": 0o644, "etc/provisioner/node.env": 0o644,
                     "root/.ssh/authorized_keys": 0o600, "root/.ssh": 0o700, "root": 0o700,
                     "etc": 0o755, "etc/provisioner/token": 0o600}
    if (tmp_path / "etc/provisioner/agent").exists():
        assert (tmp_path / "etc/provisioner/agent").stat().st_mode & 0o777 == 0o755
    env = subprocess.run(["busybox", "sh", "-c", '. ./etc/provisioner/node.env; '
                          'echo "$PROVISIONER_TOKEN"'], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=10, env={
                             "PATH": "/usr/bin:/bin"})
    # node.env reads the token from its absolute path; in this scratch root it is absent.
    assert env.stdout == "\n"


def test_overlay_members_as_the_kernel_reads_them() -> None:
    data = OverlayBuilder(Renderer()).build(uefi_context(token="tok-two"), node_revision=1)
    xz_part, rest = split(data)
    entries = cpio.unpack(lzma.decompress(xz_part)) + cpio.unpack(rest)
    paths = [e.path for e in entries]
    assert paths.index("etc") < paths.index("etc/hostname")
    assert all(e.mtime == 0 and e.uid == 0 and e.gid == 0 for e in entries)
    by_path = {e.path: e for e in entries}
    assert by_path["etc/provisioner/token"].data == b"tok-two"
    assert b"PROVISIONER_IMAGE_VERSION=4" in by_path["etc/provisioner/node.env"].data


def test_cache_hit_reuses_the_xz_part_with_a_new_token() -> None:
    builder = OverlayBuilder(Renderer())
    first = builder.build(bios_context(token="tok-a"), node_revision=7)
    second = builder.build(bios_context(token="tok-b"), node_revision=7)
    assert (builder.misses, builder.hits) == (1, 1)
    (xz_a, tok_a), (xz_b, tok_b) = split(first), split(second)
    assert xz_a == xz_b
    assert tok_a == token_archive("tok-a") and tok_b == token_archive("tok-b")
    assert b"tok-" not in lzma.decompress(xz_a), "the cached part must hold no secret"


def test_cache_misses_on_new_revision_or_new_variables() -> None:
    builder = OverlayBuilder(Renderer())
    builder.build(bios_context(token="t"), node_revision=1)
    builder.build(bios_context(token="t"), node_revision=2)
    builder.build(uefi_context(token="t"), node_revision=2)
    assert (builder.misses, builder.hits) == (3, 0)


def test_cache_misses_when_a_site_template_changes(tmp_path: Path) -> None:
    (tmp_path / "overlay/etc").mkdir(parents=True)
    motd = tmp_path / "overlay/etc/motd.j2"
    motd.write_text("one\n")
    builder = OverlayBuilder(Renderer(tmp_path))
    first = builder.build(bios_context(), node_revision=1)
    motd.write_text("two\n")
    second = builder.build(bios_context(), node_revision=1)
    assert builder.misses == 2
    assert b"two" in lzma.decompress(second) and b"one" in lzma.decompress(first)


def test_cache_is_bounded() -> None:
    builder = OverlayBuilder(Renderer(), cache_size=2)
    for revision in range(5):
        builder.build(bios_context(), node_revision=revision)
    assert len(builder._cache) == 2
    builder.build(bios_context(), node_revision=4)
    builder.build(bios_context(), node_revision=0)
    assert (builder.hits, builder.misses) == (1, 6)


def test_no_token_means_no_second_archive() -> None:
    data = OverlayBuilder(Renderer()).build(bios_context(), node_revision=1)
    assert split(data)[1] == b""


def test_broken_site_template_fails_this_node_with_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "overlay/etc").mkdir(parents=True)
    (tmp_path / "overlay/etc/motd.j2").write_text("rack {{ rack }}\n")
    with pytest.raises(RenderError, match=r"^overlay/etc/motd\.j2:1: .*\(node node001\)$"):
        OverlayBuilder(Renderer(tmp_path)).build(bios_context(), node_revision=1)


def test_render_and_pack_is_fast() -> None:
    """Issue target: per-node overlay render+pack under 50 ms median (uncached)."""
    assert measure_render_and_pack(rounds=20) < 0.050


def test_kernel_boots_image_plus_overlay_and_init_calls_back(
        kernel: KernelTree, tmp_path: Path) -> None:
    """QEMU (TCG) boots image.cpio.xz + overlay (xz part + plain token cpio) concatenated:
    the kernel unpacks all three archives, our /init loads virtio_net, gets a lease from
    QEMU's user network and POSTs the token and facts to a server on this host's loopback."""
    image = minimal_image(kernel)
    assert len(image) % 4 == 0
    with Callback([200]) as server:
        port = server.server.server_address[1]
        node = Node(mac=MacAddress("52:54:00:12:34:56"), name="qemu1", firmware=Firmware.BIOS)
        ctx = BootContext.for_node(node, {}, boot_base="http://10.0.2.2:1",
                                   api_base=f"http://10.0.2.2:{port}", image_name="t",
                                   image_version="1", token="tok-qemu-boot")
        overlay = OverlayBuilder(Renderer()).build(ctx, node_revision=1)
        initrd = tmp_path / "initrd"
        initrd.write_bytes(image + overlay)
        log = tmp_path / "console.log"
        qemu = subprocess.run(
            ["qemu-system-x86_64", "-m", "512", "-nographic", "-no-reboot", "-monitor", "none",
             "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
             "-append", "console=ttyS0 panic=-1", "-serial", f"file:{log}",
             "-netdev", "user,id=n0", "-device",
             "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"],
            capture_output=True, timeout=240, check=False)
        console = log.read_text(errors="replace")
    assert qemu.returncode == 0, console[-3000:]
    assert "provisioner-init: network up on eth0 ip=10.0.2.15" in console, console[-3000:]
    assert "provisioner-init: callback accepted" in console, console[-3000:]
    assert "image-init-reached token=tok-qemu-boot" in console
    _, body = server.requests[0]
    assert body["token"] == "tok-qemu-boot" and body["mac"] == "52:54:00:12:34:56"
    assert body["facts"]["nics"] == [{"name": "eth0", "mac": "52:54:00:12:34:56"}]
    assert body["facts"]["memory_mib"] > 256
