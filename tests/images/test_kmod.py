"""Module load order from modules.dep (and modinfo), checked against the real cloud kernel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError
from provisioner.images.build.kernel import KernelTree
from provisioner.images.build.kmod import (
    DEFAULT_NET_MODULES,
    module_name,
    modules_with_deps,
    parse_modules_dep,
)

# ENVIRONMENT.md's order; virtio_pci_legacy_dev and virtio_pci_modern_dev do not depend on each
# other, and modprobe (like us) loads modern first, so the test compares the two as a set.
ENV_ORDER = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
             "virtio_pci", "failover", "net_failover", "virtio_net"]


def _names(paths: list[Path]) -> list[str]:
    return [module_name(p.name) for p in paths]


def _respects_modules_dep(paths: list[Path], modules_root: Path) -> bool:
    table = parse_modules_dep((modules_root / "modules.dep").read_text())
    position = {module_name(p.name): i for i, p in enumerate(paths)}
    return all(position[module_name(d)] < position[name]
               for name in position for d in table[name][1])


def test_default_net_modules_on_the_cloud_kernel(kernel: KernelTree) -> None:
    paths = modules_with_deps(kernel.modules_root, DEFAULT_NET_MODULES)
    names = _names(paths)
    assert sorted(names) == sorted(ENV_ORDER)
    assert names[:2] == ENV_ORDER[:2] and names[4:] == ENV_ORDER[4:]
    assert all(p.is_file() and p.is_relative_to(kernel.modules_root) for p in paths)
    assert _respects_modules_dep(paths, kernel.modules_root)


def test_order_matches_modprobe_show_depends(kernel: KernelTree) -> None:
    out = subprocess.run(
        ["modprobe", "-d", str(kernel.root), "-S", kernel.release, "--show-depends",
         "-a", *DEFAULT_NET_MODULES], capture_output=True, text=True, check=True).stdout
    # With -a, modprobe prints each module's full chain; a module is loaded once, the first time.
    modprobe = list(dict.fromkeys(module_name(line.split()[1]) for line in out.splitlines()
                                  if line.startswith("insmod")))
    assert _names(modules_with_deps(kernel.modules_root, DEFAULT_NET_MODULES)) == modprobe


def test_each_module_once_even_when_asked_twice(kernel: KernelTree) -> None:
    names = _names(modules_with_deps(kernel.modules_root,
                                     ["virtio_net", "virtio-net", "virtio_blk", "virtio_ring"]))
    assert len(names) == len(set(names))
    assert names.index("virtio_ring") < names.index("virtio_blk")


def test_unknown_module_names_the_module_and_kernel(kernel: KernelTree) -> None:
    with pytest.raises(ImageBuildError,
                       match=f"kernel module e1000zz not found for kernel {kernel.release}"):
        modules_with_deps(kernel.modules_root, ["virtio_net", "e1000zz"])


def _copy_virtio(kernel: KernelTree, tmp_path: Path) -> Path:
    root = tmp_path / "lib/modules" / kernel.release
    for sub in ("kernel/drivers/virtio", "kernel/drivers/net", "kernel/net/core"):
        shutil.copytree(kernel.modules_root / sub, root / sub)
    return root


def test_depmod_runs_when_modules_dep_is_missing(kernel: KernelTree,
                                                 tmp_path: Path) -> None:
    root = _copy_virtio(kernel, tmp_path)
    paths = modules_with_deps(root, DEFAULT_NET_MODULES)
    assert (root / "modules.dep").is_file()
    assert _names(paths) == _names(modules_with_deps(kernel.modules_root,
                                                     DEFAULT_NET_MODULES))


def test_modinfo_fallback_gives_a_valid_order(kernel: KernelTree, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_virtio(kernel, tmp_path)
    # No depmod on PATH: modules.dep cannot be written, so modinfo's depends= is used.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "modinfo").symlink_to(shutil.which("modinfo") or "/usr/sbin/modinfo")
    monkeypatch.setenv("PATH", str(bin_dir))
    paths = modules_with_deps(root, ["virtio_net"])
    assert not (root / "modules.dep").exists()
    names = _names(paths)
    assert set(names) == {"virtio_ring", "virtio", "failover", "net_failover", "virtio_net"}
    assert names[-1] == "virtio_net"
    assert names.index("failover") < names.index("net_failover")
    assert names.index("virtio_ring") < names.index("virtio")


def test_parse_modules_dep_handles_compressed_names() -> None:
    table = parse_modules_dep("kernel/a/foo-bar.ko.xz: kernel/b/baz.ko.zst\nkernel/b/baz.ko.zst:\n")
    assert table["foo_bar"] == ("kernel/a/foo-bar.ko.xz", ["kernel/b/baz.ko.zst"])
    assert table["baz"] == ("kernel/b/baz.ko.zst", [])
