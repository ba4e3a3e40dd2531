"""Fetch a Debian kernel without installing it on the host: `apt-get download` + `dpkg -x`.

`fetch_kernel(package, cache)` accepts a package name (a metapackage such as
`linux-image-cloud-amd64` is resolved to the real `linux-image-6.1.0-N-cloud-amd64`), a path to a
`.deb`, or an already unpacked tree (a directory holding `boot/vmlinuz-*` and `lib/modules/*`).

Cache layout: `CACHE/debs/*.deb` (what apt-get downloaded) and `CACHE/kernels/PKG_VERSION/` (the
unpacked tree). A tree is complete once it holds the `.complete` marker, written last, so an
interrupted unpack is redone instead of being used half-written. `CACHE/resolved.json` remembers
which real package and version a name resolved to, until apt's package lists change, so a second
call with the same package neither runs apt nor touches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ImageBuildError

DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64"
COMPLETE_MARKER = ".complete"
#: Changes (mtime) whenever `apt-get update` fetches new package lists.
APT_LISTS = Path("/var/lib/apt/lists")
_APT_TIMEOUT = 600.0
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel: the image to boot and the modules that go with it."""

    vmlinuz: Path
    release: str
    modules_root: Path  # ROOT/lib/modules/RELEASE
    package_version: str = ""

    @property
    def root(self) -> Path:
        """The unpacked package root (the directory holding boot/ and lib/)."""
        return self.modules_root.parent.parent.parent


def _run(args: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    try:
        done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True,
                              timeout=_APT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ImageBuildError(f"{what}: {args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what}: {args[0]} timed out after {_APT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageBuildError(f"{what}: {detail}")
    return done.stdout


def _candidate(package: str) -> dict[str, str]:
    """The fields of the candidate version of `package` (one `apt-cache show` call: ~1 s)."""
    out = _run(["apt-cache", "show", "--no-all-versions", package],
               what=f"kernel package {package} not found; run `apt-get update` or name an "
                    "existing package, a .deb or an unpacked kernel tree")
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" ") and key not in fields:
            fields[key] = value.strip()
    return fields


def resolve_package(package: str) -> tuple[str, str]:
    """(real package, version): follows a metapackage to the linux-image-X.Y.Z-N-FLAVOUR it pins."""
    if not _PACKAGE_RE.match(package):
        raise ImageBuildError(f"kernel: {package!r} is neither a package name nor an existing path")
    for _ in range(3):  # metapackages point at the real image one level down; be bounded anyway
        fields = _candidate(package)
        version = fields.get("Version", "")
        if not version:
            break
        depends = fields.get("Depends", "")
        real = [d.split()[0] for d in depends.split(",") if d.strip().startswith("linux-image-")]
        if not real or _is_real_image(package):
            return package, version
        package = real[0]
    raise ImageBuildError(f"kernel package {package} has no installable candidate; "
                          "run `apt-get update` or give a .deb or an unpacked tree")


def _resolve_cached(package: str, cache: Path) -> tuple[str, str]:
    """resolve_package, remembered in CACHE/resolved.json until apt's package lists change
    (apt-cache takes about a second per call; a cached build should not wait for it)."""
    marker = cache / "resolved.json"
    try:
        stamp = APT_LISTS.stat().st_mtime_ns
    except OSError:
        stamp = 0
    try:
        known = json.loads(marker.read_text())
    except (OSError, ValueError):
        known = {}
    hit = known.get(package)
    if isinstance(hit, list) and len(hit) == 3 and hit[2] == stamp:
        return str(hit[0]), str(hit[1])
    name, version = resolve_package(package)
    known[package] = [name, version, stamp]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    tmp.replace(marker)
    return name, version


def _is_real_image(package: str) -> bool:
    """linux-image-6.1.0-26-cloud-amd64 (versioned) rather than linux-image-cloud-amd64."""
    return bool(re.match(r"^linux-image-\d", package))


def _find_tree(root: Path, version: str = "") -> KernelTree:
    modules = sorted(p for p in (root / "lib" / "modules").glob("*") if p.is_dir())
    for modules_root in modules:
        vmlinuz = root / "boot" / f"vmlinuz-{modules_root.name}"
        if vmlinuz.is_file():
            return KernelTree(vmlinuz, modules_root.name, modules_root, version)
    raise ImageBuildError(f"kernel: {root} has no boot/vmlinuz-RELEASE with lib/modules/RELEASE")


def ensure_depmod(tree: KernelTree) -> None:
    """Write modules.dep for an unpacked tree that lacks it (Debian's postinst normally does)."""
    if (tree.modules_root / "modules.dep").is_file():
        return
    _run(["depmod", "-b", str(tree.root), tree.release], what=f"depmod for {tree.release}")


def _unpack_deb(deb: Path, dest: Path, version: str) -> KernelTree:
    """dpkg -x into a temporary sibling, depmod, then rename into place (atomic)."""
    if (dest / COMPLETE_MARKER).is_file():
        return _find_tree(dest, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _run(["dpkg", "-x", str(deb), str(tmp)], what=f"unpacking {deb.name}")
        tree = _find_tree(tmp, version)
        ensure_depmod(tree)
        (tmp / COMPLETE_MARKER).write_text(f"{deb.name}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _find_tree(dest, version)


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field], what=f"reading {deb}").strip()


def _download(package: str, version: str, debs: Path, progress: Progress | None) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    existing = _deb_path(debs, package, version)
    if existing is not None:
        return existing
    if progress:
        progress(f"downloading {package} {version}")
    _run(["apt-get", "download", f"{package}={version}"], cwd=debs,
         what=f"downloading kernel package {package}; check the Debian mirror in sources.list")
    found = _deb_path(debs, package, version)
    if found is None:
        raise ImageBuildError(f"apt-get download {package} left no .deb in {debs}")
    return found


def _deb_path(debs: Path, package: str, version: str) -> Path | None:
    # apt-get encodes ':' of an epoch as %3a in file names.
    quoted = version.replace(":", "%3a")
    matches = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    return matches[0] if matches else None


def fetch_kernel(package: str, cache: Path, progress: Progress | None = None) -> KernelTree:
    """The kernel tree for `package` (name, .deb path or unpacked dir), unpacked under `cache`."""
    path = Path(package)
    if path.is_dir():
        tree = _find_tree(path)
        ensure_depmod(tree)
        return tree
    if path.suffix == ".deb":
        if not path.is_file():
            raise ImageBuildError(f"kernel: {path} does not exist")
        name, version = _deb_field(path, "Package"), _deb_field(path, "Version")
        return _unpack_deb(path, cache / "kernels" / f"{name}_{version}", version)
    name, version = _resolve_cached(package, cache)
    dest = cache / "kernels" / f"{name}_{version}"
    if (dest / COMPLETE_MARKER).is_file():
        return _find_tree(dest, version)
    deb = _download(name, version, cache / "debs", progress)
    if progress:
        progress(f"unpacking {deb.name}")
    return _unpack_deb(deb, dest, version)
