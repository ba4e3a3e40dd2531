"""Boot files under the image directory, and their ETags.

URL layout: /boot/images/NAME/VERSION/FILE maps to IMAGES/NAME/VERSION/FILE. The ETag is the
file's sha256 from the version's manifest.json when it lists the file (so a rebuilt identical
image keeps its ETag, and iPXE's or a proxy's cached copy stays valid), else one made of size and
modification time. Paths are checked component by component and resolved: nothing outside the
image directory is opened. Only boot artifacts are served: the kernel and the image. The
manifest, the build log and anything else an image directory holds stay on the head node.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import NotFound

IMAGES_PREFIX = "/boot/images/"
BOOT_ARTIFACTS = frozenset({"vmlinuz", "image.cpio.xz"})  # what boot.ipxe.j2 fetches


@dataclass(frozen=True, slots=True)
class BootFile:
    fd: int
    size: int
    etag: str
    content_type: str = "application/octet-stream"


def open_boot_file(root: Path, url_path: str) -> BootFile:
    """Open the file a /boot/images/... path names; NotFound for anything else."""
    parts = url_path.removeprefix(IMAGES_PREFIX).split("/")
    if len(parts) != 3 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise NotFound(f"{url_path}: not an image file path (/boot/images/NAME/VERSION/FILE)")
    if parts[2] not in BOOT_ARTIFACTS:
        raise NotFound(f"{url_path}: not a boot artifact (only {', '.join(sorted(BOOT_ARTIFACTS))}"
                       " are served)")
    real_root = root.resolve()
    try:
        real = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the name
        raise NotFound(f"{url_path}: no such file") from None
    if not real.is_relative_to(real_root):
        raise NotFound(f"{url_path}: no such file")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise NotFound(f"{url_path}: no such file") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound(f"{url_path}: not a regular file")
    digest = _manifest_sha256(real.parent, real.name)
    etag = f'"{digest}"' if digest else f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    return BootFile(fd, info.st_size, etag)


def _manifest_sha256(version_dir: Path, name: str) -> str | None:
    try:
        manifest = json.loads((version_dir / "manifest.json").read_text())
        digest = manifest["files"][name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) and len(digest) == 64 else None
