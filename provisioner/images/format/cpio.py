"""newc ("070701") cpio archives, the format the Linux initramfs unpacker reads. Pure: no IO.

Archives are reproducible: `pack` sorts entries by path components (so a parent directory always
comes before its children), synthesises missing parent directories, numbers inodes in archive
order and keeps each entry's mtime/uid/gid as given (all 0 by default). The same entries in any
order therefore give the same bytes.

The streaming writer for trees on disk is `provisioner.images.format.archive`; it shares `header`,
`padding` and `TRAILER` with this module so both produce identical bytes for identical input.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from provisioner.errors import ImageBuildError, ImageError

MAGIC = b"070701"
#: newc with a checksum field; readers accept it too (GNU cpio -H crc writes it).
MAGIC_CRC = b"070702"
HEADER_SIZE = 110
TRAILER_NAME = "TRAILER!!!"
DIR_MODE = stat.S_IFDIR | 0o755


class Sink(Protocol):
    """Where archives are written: a binary file, BytesIO, or compress.XzSink."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative (no leading '/'); `mode` includes the type bits.

    `data` is the file content, or the target of a symlink. `ino` 0 means "assign in order".
    """

    path: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    ino: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    """A regular file entry; `mode` is the permission bits."""
    return Entry(path=path, mode=stat.S_IFREG | (mode & 0o7777), data=data)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path=path, mode=stat.S_IFDIR | (mode & 0o7777))


def symlink(path: str, target: str) -> Entry:
    return Entry(path=path, mode=stat.S_IFLNK | 0o777, data=target.encode())


def chardev(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    """A character device node, e.g. chardev("dev/console", 5, 1)."""
    return Entry(path=path, mode=stat.S_IFCHR | (mode & 0o7777), rdev_major=major, rdev_minor=minor)


def normalize_path(path: str) -> str:
    """'/a//b/./c/' -> 'a/b/c'; refuses '..' and empty paths (an archive must not escape root)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ImageBuildError(f"invalid path in image: {path!r}")
    return "/".join(parts)


def sort_key(path: str) -> tuple[str, ...]:
    """Component-wise order: a directory precedes everything below it, siblings stay together."""
    return tuple(path.split("/"))


def padding(length: int) -> bytes:
    """NUL bytes that align `length` up to the next multiple of 4 (newc's alignment)."""
    return b"\0" * (-length % 4)


def header(entry: Entry, ino: int, size: int) -> bytes:
    """Header + NUL-terminated name + alignment padding for one member with `size` data bytes."""
    name = entry.path.encode("utf-8", "surrogateescape") + b"\0"
    nlink = 2 if entry.is_dir else 1
    fields = (ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime, size,
              0, 0, entry.rdev_major, entry.rdev_minor, len(name), 0)
    head = MAGIC + b"".join(b"%08X" % (v & 0xFFFFFFFF) for v in fields) + name
    return head + padding(len(head))


def trailer(ino: int = 0) -> bytes:
    """The TRAILER!!! member that ends an archive."""
    end = Entry(path=TRAILER_NAME, mode=0)
    return header(end, ino, 0)


def prepare(entries: Iterable[Entry]) -> list[Entry]:
    """Normalise paths, refuse duplicates, add missing parent directories, sort."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = normalize_path(entry.path)
        if path in by_path:
            raise ImageBuildError(f"duplicate path in image: {path}")
        by_path[path] = replace(entry, path=path) if path != entry.path else entry
    for path in list(by_path):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            by_path.setdefault(parent, Entry(path=parent, mode=DIR_MODE))
    return [by_path[p] for p in sorted(by_path, key=sort_key)]


def write(entries: Iterable[Entry], out: Sink) -> int:
    """Write a complete archive (with trailer) to `out`; return the number of bytes written."""
    total = 0
    ino = 0
    for ino, entry in enumerate(prepare(entries), start=1):
        data = b"" if entry.is_dir else entry.data
        chunk = header(entry, entry.ino or ino, len(data)) + data + padding(len(data))
        out.write(chunk)
        total += len(chunk)
    end = trailer()
    out.write(end)
    return total + len(end)


def pack(entries: Iterable[Entry]) -> bytes:
    """The newc archive of `entries` as bytes (see module docstring for the ordering rules)."""
    buf = io.BytesIO()
    write(entries, buf)
    return buf.getvalue()


def _field(raw: bytes, index: int, offset: int) -> int:
    text = raw[6 + 8 * index : 14 + 8 * index]
    try:
        return int(text, 16)
    except ValueError:
        raise ImageError(f"corrupt cpio header at offset {offset}") from None


def _read_member(data: bytes, offset: int) -> tuple[Entry, int]:
    raw = data[offset : offset + HEADER_SIZE]
    if len(raw) < HEADER_SIZE or raw[:6] not in (MAGIC, MAGIC_CRC):
        raise ImageError(f"not a newc cpio member at offset {offset}")
    ino, mode, uid, gid, _nlink, mtime, size = (_field(raw, i, offset) for i in range(7))
    rmaj, rmin, namesize = (_field(raw, i, offset) for i in (9, 10, 11))
    name_end = offset + HEADER_SIZE + namesize
    name = data[offset + HEADER_SIZE : name_end - 1].decode("utf-8", "surrogateescape")
    start = name_end + (-name_end % 4)
    end = start + size
    if end > len(data):
        raise ImageError(f"truncated cpio member {name!r} at offset {offset}")
    entry = Entry(path=name, mode=mode, data=data[start:end], uid=uid, gid=gid, mtime=mtime,
                  ino=ino, rdev_major=rmaj, rdev_minor=rmin)
    return entry, end + (-end % 4)


def unpack(data: bytes) -> list[Entry]:
    """Members of one or more concatenated archives, in archive order, without trailers.

    Like the kernel, NUL padding between concatenated archives is skipped.
    """
    entries: list[Entry] = []
    offset = 0
    while offset < len(data):
        if data[offset] == 0:
            offset += 1
            continue
        entry, offset = _read_member(data, offset)
        if entry.path != TRAILER_NAME:
            entries.append(entry)
    return entries
