"""fetch_kernel against the real Debian cloud kernel (apt-get download + dpkg -x, cached)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError
from provisioner.images.build import kernel
from provisioner.images.build.kernel import KernelTree, fetch_kernel, resolve_package
from tests.support.kernel import KERNEL_CACHE


def test_cloud_kernel_is_a_complete_tree(kernel: KernelTree) -> None:
    assert kernel.release.endswith("-cloud-amd64")
    assert kernel.vmlinuz.name == f"vmlinuz-{kernel.release}"
    assert kernel.vmlinuz.stat().st_size > 4 * 1024 * 1024
    assert kernel.modules_root == kernel.root / "lib/modules" / kernel.release
    assert (kernel.modules_root / "modules.dep").is_file()
    assert kernel.package_version
    magic = subprocess.run(["file", "-b", str(kernel.vmlinuz)], capture_output=True,
                           text=True, check=False).stdout
    assert "Linux kernel" in magic or not magic  # `file` may be absent; the size check stands


def test_metapackage_resolves_to_the_versioned_image() -> None:
    name, version = resolve_package("linux-image-cloud-amd64")
    assert name.startswith("linux-image-6.") and name.endswith("-cloud-amd64")
    assert version


def test_second_fetch_is_cached_and_fast(kernel: KernelTree) -> None:
    debs = sorted((KERNEL_CACHE / "debs").glob("*.deb"))
    before = [d.stat().st_mtime_ns for d in debs]
    start = time.monotonic()
    again = fetch_kernel("linux-image-cloud-amd64", KERNEL_CACHE)
    assert time.monotonic() - start < 1.5  # no apt-cache call (about 1 s each)
    assert again == kernel
    assert [d.stat().st_mtime_ns for d in debs] == before


def test_resolution_is_redone_when_apt_lists_change(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / "lists"
    monkeypatch.setattr(kernel, "APT_LISTS", lists)
    first = kernel._resolve_cached("linux-image-cloud-amd64", tmp_path)
    assert json.loads((tmp_path / "resolved.json").read_text())[
        "linux-image-cloud-amd64"] == [*first, 0]
    lists.mkdir()  # as if `apt-get update` had run
    assert kernel._resolve_cached("linux-image-cloud-amd64", tmp_path) == first
    stamp = json.loads((tmp_path / "resolved.json").read_text())["linux-image-cloud-amd64"][2]
    assert stamp == lists.stat().st_mtime_ns


def test_accepts_an_unpacked_tree(kernel: KernelTree, tmp_path: Path) -> None:
    assert fetch_kernel(str(kernel.root), tmp_path) == KernelTree(
        kernel.vmlinuz, kernel.release, kernel.modules_root)


def test_accepts_a_deb_and_runs_depmod(kernel: KernelTree, tmp_path: Path) -> None:
    deb = next((KERNEL_CACHE / "debs").glob("linux-image-*.deb"))
    tree = fetch_kernel(str(deb), tmp_path, progress=None)
    assert tree.release == kernel.release
    assert tree.root.parent == tmp_path / "kernels"
    assert (tree.modules_root / "modules.dep").read_text() == (
        kernel.modules_root / "modules.dep").read_text()


def test_unpacked_tree_without_modules_dep_gets_one(kernel: KernelTree,
                                                     tmp_path: Path) -> None:
    root = tmp_path / "k"
    (root / "boot").mkdir(parents=True)
    shutil.copy(kernel.vmlinuz, root / "boot")
    mods = root / "lib/modules" / kernel.release
    shutil.copytree(kernel.modules_root / "kernel/drivers/virtio", mods / "kernel/virtio")
    tree = fetch_kernel(str(root), tmp_path / "cache")
    assert "virtio_ring.ko" in (tree.modules_root / "modules.dep").read_text()


@pytest.mark.parametrize(("package", "message"), [
    ("linux-image-does-not-exist-amd64", "linux-image-does-not-exist-amd64 not found"),
    ("/nonexistent/kernel.deb", "does not exist"),
    ("Bad Name!", "neither a package name nor an existing path"),
])
def test_missing_kernel_is_one_clear_line(tmp_path: Path, package: str, message: str) -> None:
    with pytest.raises(ImageBuildError, match=message) as info:
        fetch_kernel(package, tmp_path)
    assert "\n" not in str(info.value)


def test_tree_without_kernel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="no boot/vmlinuz-RELEASE"):
        fetch_kernel(str(tmp_path), tmp_path)
