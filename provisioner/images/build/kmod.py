"""Kernel modules for an image: which .ko files to copy and in which order to insmod them.

The image's /init has busybox `insmod`, which loads one file and knows nothing of dependencies,
so the builder writes the full load order. It comes from `modules.dep` (written by depmod; each
line lists a module's transitive dependencies, to be loaded from the last to the first, which is
what `modprobe` does), with `depmod -b` run first when an unpacked tree lacks it, and `modinfo -F
depends` as the last resort.

Some needed modules are not symbol dependencies: virtio_net does not depend on virtio_pci, but
without virtio_pci no virtio PCI device is ever probed, so DEFAULT_NET_MODULES names both.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from provisioner.errors import ImageBuildError

#: Modules the network needs on the Debian cloud kernel under QEMU (virtio-net-pci). A kickstart's
#: `modules` directive adds to this list.
DEFAULT_NET_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net")

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_TIMEOUT = 60.0


def module_name(path: str) -> str:
    """kernel/drivers/net/virtio_net.ko.xz -> virtio_net (modprobe treats '-' and '_' alike)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (relative path, [dependency paths as listed]) from the text of modules.dep."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        table[module_name(path.strip())] = (path.strip(), deps.split())
    return table


def release_of(modules_root: Path) -> str:
    return modules_root.name


def _ensure_modules_dep(modules_root: Path) -> Path | None:
    dep = modules_root / "modules.dep"
    if dep.is_file():
        return dep
    base = modules_root.parent.parent.parent  # ROOT/lib/modules/RELEASE
    try:
        subprocess.run(["depmod", "-b", str(base), release_of(modules_root)], check=True,
                       capture_output=True, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None  # fall back to modinfo
    return dep if dep.is_file() else None


DepTable = dict[str, tuple[str, list[str]]]


def _load_order(table: DepTable, names: Iterable[str], release: str) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        # modules.dep's list is transitive and ordered so that loading it back to front works.
        for dep in reversed(table[module_name(path)][1]):
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in table:
            raise ImageBuildError(f"kernel module {name} not found for kernel {release}")
        visit(table[key][0])
    return order


def modules_with_deps(modules_root: Path, names: Sequence[str]) -> list[Path]:
    """Absolute .ko paths for `names` and their dependencies: dependencies first, each once."""
    release = release_of(modules_root)
    if not modules_root.is_dir():
        raise ImageBuildError(f"no modules directory {modules_root} for kernel {release}")
    dep = _ensure_modules_dep(modules_root)
    table = parse_modules_dep(dep.read_text()) if dep else _table_from_modinfo(modules_root, names)
    return [modules_root / p for p in _load_order(table, names, release)]


def _table_from_modinfo(modules_root: Path, names: Iterable[str]) -> DepTable:
    """The part of the dependency table reachable from `names`, from `modinfo -F depends`.

    modinfo lists direct dependencies only; `_load_order` recurses into each, so that is enough.
    """
    paths = {module_name(p.name): p for p in modules_root.rglob("*.ko*")
             if p.name.endswith(_MODULE_SUFFIXES)}
    table: DepTable = {}
    todo = [n.replace("-", "_") for n in names]
    while todo:
        name = todo.pop()
        if name in table or name not in paths:
            continue
        deps = _modinfo_depends(paths[name])
        rel = [str(paths[d].relative_to(modules_root)) for d in deps if d in paths]
        table[name] = (str(paths[name].relative_to(modules_root)), rel)
        todo.extend(deps)
    return table


def _modinfo_depends(path: Path) -> list[str]:
    try:
        out = subprocess.run(["modinfo", "-F", "depends", str(path)], capture_output=True,
                             text=True, timeout=_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageBuildError(f"modinfo {path.name} failed: {exc}") from None
    return [d.strip().replace("-", "_") for d in out.strip().split(",") if d.strip()]
