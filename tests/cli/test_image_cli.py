"""`provisioner image ...` end to end: real builds with the Debian cloud kernel, one-line errors
with exit codes, and the current version left alone by every failure."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from provisioner.images.build.kernel import KernelTree
from provisioner.images.format import cpio
from tests.support.cli import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    # Progress lines ("image build: 40% rootfs ...") come first when stderr is no TTY.
    return Cli(tmp_path, prefix=["image"], progress="image build: ",
               env={"PROVISIONER_IMAGES_CACHE": str(tmp_path / "cache")})


def test_build_list_show_rebuild(cli: Cli, kernel: KernelTree) -> None:
    out = cli("build", "kickstart/compute.ks.j2", "--name", "compute", "--kernel",
              str(kernel.root), "--var", "timezone=UTC", "--var", 'modules=["virtio_net"]')
    assert out.startswith("built compute:1 in ")
    again = cli("build", "kickstart/compute.ks.j2", "--name", "compute", "--kernel",
                str(kernel.root), "--var", "timezone=UTC", "--var", 'modules=["virtio_net"]')
    assert "compute:1 is up to date (same inputs); nothing built" in again
    table = cli("list").splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "CURRENT"]
    assert table[1].split()[:3] == ["compute", "1", "*"]
    shown = cli.json("show", "compute", "--verify")
    assert isinstance(shown, dict) and shown["verify_failed"] == []
    assert shown["urls"]["vmlinuz"] == "/boot/images/compute/1/vmlinuz"
    assert shown["manifest"]["kernel_release"] == kernel.release
    assert (cli.data / "bootimages/compute/1/build.log").is_file()


def _initrd(tmp_path: Path, check: int = lzma.CHECK_CRC32) -> Path:
    path = tmp_path / f"initrd-{check}.xz"
    path.write_bytes(lzma.compress(cpio.pack([cpio.file("init", b"#!/bin/sh\n", 0o755)]),
                                   check=check))
    return path


def test_import_set_current_delete(cli: Cli, kernel: KernelTree, tmp_path: Path) -> None:
    initrd = _initrd(tmp_path)
    assert cli("import", "rescue", "--kernel", str(kernel.vmlinuz), "--initrd", str(initrd)) \
        == "imported rescue:1; it is current\n"
    cli("import", "rescue", "--kernel", str(kernel.vmlinuz), "--initrd", str(initrd))
    assert cli("set-current", "rescue", "1") == "rescue is now rescue:1\n"
    error = cli("delete", "rescue:1", code=1)
    assert "rescue:1 is the current version" in error and "--force" in error
    assert cli("delete", "rescue:2") == "deleted rescue:2\n"
    error = cli("delete", "rescue", code=1)
    assert "--force" in error
    bad = cli("import", "rescue", "--kernel", str(kernel.vmlinuz), "--initrd",
              str(_initrd(tmp_path, lzma.CHECK_CRC64)), code=1)
    assert "CRC64" in bad and "--check=crc32" in bad
    assert cli("delete", "rescue", "--force").startswith("deleted image rescue")
    assert cli("show", "rescue", code=4).startswith("error: no image 'rescue'")
    assert cli("set-current", "nope", "1", code=4)


def test_bad_kickstart_is_one_line_and_current_untouched(cli: Cli, kernel: KernelTree,
                                                         tmp_path: Path) -> None:
    cli("import", "compute", "--kernel", str(kernel.vmlinuz), "--initrd", str(_initrd(tmp_path)))
    before = cli.json("show", "compute")
    kickstart = tmp_path / "bad.ks"
    kickstart.write_text("base busybox\n%post\nexit 9\n%end\n")
    error = cli("build", str(kickstart), "--name", "compute", "--kernel", str(kernel.root),
                code=1)
    assert error.startswith(f"error: {kickstart}:2: %post failed (exit 9)")
    kickstart.write_text("base busybox\nbogus\n")
    error = cli("build", str(kickstart), "--name", "compute", code=2)
    assert error == f"error: {kickstart}:2: unknown directive 'bogus'"
    error = cli("build", "kickstart/compute.ks.j2", "--name", "compute", "--var", "x", code=2)
    assert "--var" in error
    assert cli.json("show", "compute") == before
