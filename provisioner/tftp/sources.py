"""Where transfer bytes come from: files under the TFTP root, and content rendered per client.

Confinement (the session already refused `..`, absolute paths and control bytes by name): the
path is resolved with every symlink followed and must still lie under the resolved root, and
the final open uses O_NOFOLLOW so the last component cannot be swapped for a link between the
check and the open. Only regular files are served. Nothing outside the root is ever opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import NotFound
from provisioner.tftp.paths import ForbiddenPath

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
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{shown}: file not found") from None
    except OSError as exc:
        raise ForbiddenPath(f"{shown}: {exc.strerror}", reason="unreadable") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound(f"{shown}: not a regular file")
    return FileSource(fd, info.st_size)
