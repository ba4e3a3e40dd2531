"""The image builder end to end with the real Debian cloud kernel and busybox: the image's
contents, reproducibility, the no-change cache, and every bad input leaving the current version
serving."""

from __future__ import annotations

import lzma
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError, ProvisionerError, TemplateError
from provisioner.images.build.builder import BuildRequest, ImageBuilder
from provisioner.images.build.kernel import KernelTree
from provisioner.images.format import compress, cpio
from provisioner.images.format.catalog import ImageCatalog
from provisioner.images.fsutil import sha256_file
from provisioner.render.environment import Renderer


@pytest.fixture
def catalog(tmp_path: Path) -> ImageCatalog:
    return ImageCatalog(tmp_path / "images", keep=5)


@pytest.fixture
def builder(catalog: ImageCatalog, tmp_path: Path) -> ImageBuilder:
    return ImageBuilder(catalog, Renderer(), tmp_path / "cache")


def _request(kernel: KernelTree, template: str = "kickstart/compute.ks.j2",
             **variables: str) -> BuildRequest:
    return BuildRequest(template, "compute", variables, kernel=str(kernel.root))


def _members(path: Path) -> dict[str, cpio.Entry]:
    return {e.path: e for e in cpio.unpack(lzma.decompress(path.read_bytes()))}


def test_image_contents(builder: ImageBuilder, kernel: KernelTree) -> None:
    image = builder.build(_request(kernel)).image
    data = image.file("image.cpio.xz").read_bytes()
    assert data[:6] == b"\xfd7zXZ\0" and data[7] & 0x0F == 1  # CRC32, what the kernel reads
    # The builder's streamed xz is byte for byte compress.xz_compress of the same cpio.
    assert compress.xz_compress(lzma.decompress(data)) == data
    members = _members(image.file("image.cpio.xz"))
    init = members["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o111 and init.data.startswith(b"#!/bin/sh")
    assert stat.S_ISCHR(members["dev/console"].mode)
    assert (members["dev/console"].rdev_major, members["dev/console"].rdev_minor) == (5, 1)
    assert {e.mtime for e in members.values()} == {0}
    order = members["etc/provisioner/modules.order"].data.decode().split()
    names = [Path(p).name for p in order]
    assert names.index("virtio_ring.ko") < names.index("virtio_net.ko")
    assert names[-1] == "virtio_net.ko"
    assert all(p.lstrip("/") in members for p in order)
    assert members["bin/sh"].data == b"/bin/busybox"
    assert b"diskless compute image" in members["etc/motd"].data  # the %post ran
    assert members["etc/provisioner/udhcpc.script"].mode & 0o111
    assert "etc/systemd/system/provisioner-booted.service" not in members  # busybox init
    manifest = image.manifest
    assert manifest["files"]["image.cpio.xz"]["sha256"] == sha256_file(image.file(
        "image.cpio.xz"))
    assert manifest["files"]["image.cpio.xz"]["cpio_size"] == len(lzma.decompress(data))
    assert manifest["kernel_release"] == kernel.release
    assert (image.path / "build.log").read_text().count("== ") >= 3


def test_a_systemd_image_gets_the_callback_and_agent_units(builder: ImageBuilder,
                                                           kernel: KernelTree,
                                                           tmp_path: Path) -> None:
    """An image whose /sbin/init is systemd gets both units, enabled in multi-user.target."""
    kickstart = tmp_path / "systemd.ks"
    kickstart.write_text("base busybox\n%post\nrm -f /sbin/init\n"
                         "ln -s /lib/systemd/systemd /sbin/init\n%end\n")
    image = builder.build(BuildRequest(str(kickstart), "sd", kernel=str(kernel.root))).image
    members = _members(image.file("image.cpio.xz"))
    for unit in ("provisioner-booted.service", "provisioner-agent.service"):
        entry = members[f"etc/systemd/system/{unit}"]
        assert stat.S_IMODE(entry.mode) == 0o644 and (entry.uid, entry.gid) == (0, 0)
        link = members[f"etc/systemd/system/multi-user.target.wants/{unit}"]
        assert stat.S_ISLNK(link.mode) and link.data == f"/etc/systemd/system/{unit}".encode()
    booted = members["etc/systemd/system/provisioner-booted.service"].data.decode()
    assert "After=network-online.target multi-user.target" in booted
    assert "ExecStart=/init booted" in booted
    agent = members["etc/systemd/system/provisioner-agent.service"].data.decode()
    # Ordered after the target explicitly, or it and the callback unit make a cycle.
    assert "Restart=always" in agent
    assert "After=provisioner-booted.service multi-user.target" in agent


def test_reproducible_and_cached(builder: ImageBuilder, catalog: ImageCatalog,
                                 kernel: KernelTree, tmp_path: Path) -> None:
    first = builder.build(_request(kernel))
    assert not first.cached and first.image.version == "1"
    again = builder.build(_request(kernel))
    assert again.cached and again.image.version == "1" and again.seconds < 2
    forced = builder.build(BuildRequest("kickstart/compute.ks.j2", "compute",
                                        kernel=str(kernel.root), force=True))
    assert forced.image.version == "2"
    digest = first.image.manifest["files"]["image.cpio.xz"]["sha256"]
    assert forced.image.manifest["files"]["image.cpio.xz"]["sha256"] == digest
    assert sha256_file(forced.image.file("image.cpio.xz")) == digest
    one_thread = ImageBuilder(ImageCatalog(tmp_path / "other"), Renderer(), tmp_path / "cache",
                              xz_threads=1).build(_request(kernel)).image
    assert sha256_file(one_thread.file("image.cpio.xz")) == digest  # threads do not matter
    changed = builder.build(_request(kernel, timezone="Europe/Paris"))
    assert not changed.cached and changed.image.version == "3"
    assert catalog.show("compute").current == "1"  # publishing does not activate
    assert [p.name for p in (catalog.root / ".staging").iterdir()
            if not p.name.startswith(".lock-")] == []


BAD = {
    "syntax": ("base busybox\nkernel x y\n", ImageBuildError, ":2: kernel: expected 1"),
    "unknown-directive": ("base busybox\nfirewall --off\n", ImageBuildError,
                          ":2: unknown directive 'firewall'"),
    "undefined-variable": ("base busybox\ntimezone {{ zone }}\n", TemplateError,
                           ":2: undefined variable"),
    "missing-kernel": ("base busybox\n\nkernel /nonexistent/kernel-tree\n", ImageBuildError,
                       ":3: kernel /nonexistent/kernel-tree"),
    "failing-post": ("base busybox\n%post\necho preparing\necho it broke >&2\nexit 3\n%end\n",
                     ImageBuildError, ":2: %post failed (exit 3): it broke"),
    "packages-on-busybox": ("base busybox\n%packages\nvim\n%end\n", ImageBuildError,
                            ":3: %packages: the busybox base has no package manager"),
    "missing-file": ("base busybox\n%files\nnot-here /etc/x\n%end\n", ImageBuildError,
                     ":3: %files:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_file_and_line(
        case: str, builder: ImageBuilder, catalog: ImageCatalog, kernel: KernelTree,
        tmp_path: Path) -> None:
    current = catalog.import_pair("compute", kernel.vmlinuz, _tiny_initrd(tmp_path))
    text, error, expected = BAD[case]
    kickstart = tmp_path / f"{case}.ks.j2"
    kickstart.write_text(text)
    request = BuildRequest(str(kickstart), "compute",
                           kernel=None if case == "missing-kernel" else str(kernel.root))
    with pytest.raises(error) as failed:
        builder.build(request)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"{kickstart}{expected}"), message
    _assert_untouched(catalog, current.manifest["files"]["image.cpio.xz"]["sha256"])


def _tiny_initrd(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.cpio.xz"
    path.write_bytes(lzma.compress(cpio.pack([cpio.file("init", b"#!/bin/sh\n", 0o755)]),
                                   check=lzma.CHECK_CRC32))
    return path


def _assert_untouched(catalog: ImageCatalog, digest: str) -> None:
    info = catalog.show("compute")
    assert info.current == "1" and [v.version for v in info.versions] == ["1"]
    assert sha256_file(catalog.resolve("compute").file("image.cpio.xz")) == digest
    leftovers = [p.name for p in (catalog.root / ".staging").iterdir()
                 if not p.name.startswith(".lock-") and not p.name.endswith(".failed.log")]
    assert leftovers == []


def test_failed_post_keeps_its_log(builder: ImageBuilder, catalog: ImageCatalog,
                                   kernel: KernelTree, tmp_path: Path) -> None:
    kickstart = tmp_path / "post.ks"
    kickstart.write_text("base busybox\n%post\necho the-output-tail\nfalse\n%end\n")
    with pytest.raises(ImageBuildError):
        builder.build(BuildRequest(str(kickstart), "compute", kernel=str(kernel.root)))
    log = (catalog.root / ".staging" / "compute.failed.log").read_text()
    assert "the-output-tail" in log and "%post at" in log


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True,
                   timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_disk_full_leaves_current_serving(small_disk: Path, kernel: KernelTree,
                                          tmp_path: Path) -> None:
    catalog = ImageCatalog(small_disk / "images")
    current = catalog.import_pair("compute", kernel.vmlinuz, _tiny_initrd(tmp_path))
    builder = ImageBuilder(catalog, Renderer(), tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(ProvisionerError) as failed:
        builder.build(_request(kernel))
    assert "no space left on device" in str(failed.value), str(failed.value)
    assert "\n" not in str(failed.value)
    assert time.monotonic() - started < 60
    _assert_untouched(catalog, current.manifest["files"]["image.cpio.xz"]["sha256"])
    assert os.statvfs(small_disk).f_bfree > 0  # the staging space was given back
