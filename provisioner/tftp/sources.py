"""Where transfer bytes come from: files under the TFTP root, and content rendered per client.

Confinement (the session already refused `..`, absolute paths and control bytes by name): the
path is resolved with every symlink followed and must still lie under the resolved root, and
the final open uses O_NOFOLLOW so the last component cannot be swapped for a link between the
check and the open. Only regular files are served. Nothing outside the root is ever opened.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from provisioner.errors import NotFound
from provisioner.tftp.paths import ForbiddenPath

#: First-stage binaries from Debian's ipxe package (/usr/lib/ipxe): BIOS PXE ROMs chainload
#: undionly.kpxe, UEFI firmware ipxe.efi or snponly.efi (the firmware's own NIC driver).
IPXE_BINARIES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
_MAC_SCRIPT = re.compile(r"((?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}|[0-9a-f]{12})\.ipxe")

#: A dynamic file: given the canonical path and the client's IP, the bytes, or None if this
#: provider does not serve that path (the next provider, then the root, is tried).
Provider = Callable[[tuple[str, ...], str], bytes | None]


class FileSource:
    """A regular file read with pread: no shared file offset, so reads never race."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int | None:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BytesSource:
    """Content rendered in memory for one client (e.g. `<mac>.ipxe`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int | None:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def close(self) -> None:
        self._data = b""


class SourceResolver:
    """Maps a request to a Source: dynamic providers first, then files under `root`."""

    def __init__(self, root: Path, providers: list[Provider] | None = None) -> None:
        self.root = root.resolve()
        self.providers = list(providers or [])

    def open(self, path: tuple[str, ...], client_ip: str) -> FileSource | BytesSource:
        for provider in self.providers:
            data = provider(path, client_ip)
            if data is not None:
                return BytesSource(data)
        return open_under_root(self.root, path)


def open_under_root(root: Path, path: tuple[str, ...]) -> FileSource:
    """Open `root/path` for reading; raise NotFound or ForbiddenPath, never open outside root."""
    shown = "/".join(path)
    if not path:
        raise NotFound(f"{shown!r}: no file name")
    candidate = root.joinpath(*path)
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"{shown}: file not found") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ForbiddenPath(f"{shown}: cannot be resolved ({exc})", reason="unresolvable") from None
    if not real.is_relative_to(root):
        raise ForbiddenPath(f"{shown}: leads outside the TFTP root", reason="outside_root")
    try:
        # Refuse FIFOs, sockets and devices before opening them (opening a device can have side
        # effects); O_NONBLOCK keeps a FIFO swapped in after this check from blocking the open.
        if not stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode):
            raise NotFound(f"{shown}: not a regular file")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"{shown}: file not found") from None
    except OSError as exc:
        raise ForbiddenPath(f"{shown}: {exc.strerror}", reason="unreadable") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound(f"{shown}: not a regular file")
    return FileSource(fd, info.st_size)


def install_boot_binaries(source: Path, root: Path,
                          names: Iterable[str] = IPXE_BINARIES) -> list[str]:
    """Copy the iPXE binaries into the TFTP root when missing or different (by size and mtime).
    Copied, not linked: Debian's ipxe.efi is a symlink into /boot, and links out of the root
    are refused by design. Returns the names copied."""
    copied = []
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        origin = source / name
        if not origin.exists():
            continue
        target = root / name
        info = origin.stat()
        if target.exists() and (target.stat().st_size, int(target.stat().st_mtime)) == (
                info.st_size, int(info.st_mtime)):
            continue
        partial = target.with_name(f".{name}.partial")
        shutil.copy2(origin.resolve(), partial)
        partial.replace(target)  # atomic: a transfer never sees half a binary
        copied.append(name)
    return copied


def ipxe_chain_provider(http_base: str) -> Provider:
    """`<mac>.ipxe` over TFTP: a two-line script that hands the client to the HTTP boot plane,
    where its real boot script is rendered (iPXE fetches kernels far faster over HTTP)."""

    def provide(path: tuple[str, ...], client_ip: str) -> bytes | None:
        if len(path) != 1 or not (match := _MAC_SCRIPT.fullmatch(path[0].lower())):
            return None
        mac = match.group(1).replace("-", ":")
        if ":" not in mac:
            mac = ":".join(mac[i : i + 2] for i in range(0, 12, 2))
        return (f"#!ipxe\nchain --autofree {http_base}/boot/{mac}.ipxe || "
                f"goto failed\nexit\n:failed\necho Boot script for {mac} not available; "
                "retrying in 10 s\nsleep 10\nreboot\n").encode()

    return provide
