"""Stream a directory tree on disk into a newc cpio, reproducibly and in bounded memory.

Same rules as `provisioner.images.format.cpio.pack` (it shares its header code, so equal input gives
equal bytes): entries sorted by path components, parents first, inodes numbered in order, every
mtime set to `mtime` (0 unless given, like SOURCE_DATE_EPOCH), owner 0:0 unless
`preserve_owner`. Only the list of paths is held in memory; file contents are copied in chunks.
Hard links become separate files (the initramfs unpacker handles either, and the tree's inode
numbers are not reproducible). Sockets are skipped: they cannot be recreated from an archive.

`extra` entries (built in memory: /init, /etc/provisioner/modules.order, device nodes) are merged
in and replace a file of the same path from the tree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ImageBuildError
from provisioner.images.format import cpio

CHUNK = 1024 * 1024

Progress = Callable[[int], None]


@dataclass(frozen=True)
class _Member:
    entry: cpio.Entry
    source: Path | None = None  # a regular file whose content is streamed from disk
    size: int = 0


def _member(path: Path, rel: str, st: os.stat_result, mtime: int,
            preserve_owner: bool) -> _Member | None:
    owner = (st.st_uid, st.st_gid) if preserve_owner else (0, 0)
    base = cpio.Entry(path=rel, mode=st.st_mode, uid=owner[0], gid=owner[1], mtime=mtime)
    if stat.S_ISREG(st.st_mode):
        return _Member(base, path, st.st_size)
    if stat.S_ISLNK(st.st_mode):
        target = os.fsencode(os.readlink(path))
        return _Member(cpio.Entry(rel, st.st_mode, target, *owner, mtime))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        dev = os.major(st.st_rdev), os.minor(st.st_rdev)
        return _Member(cpio.Entry(rel, st.st_mode, b"", *owner, mtime, 0, *dev))
    if stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return _Member(base)
    return None  # socket


def _walk(root: Path, prefix: str = "") -> Iterator[tuple[Path, str, os.stat_result]]:
    with os.scandir(root) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        rel = f"{prefix}{child.name}"
        st = child.stat(follow_symlinks=False)
        yield Path(child.path), rel, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(Path(child.path), rel + "/")


def _collect(root: Path, extra: Iterable[cpio.Entry], mtime: int,
             preserve_owner: bool) -> list[tuple[cpio.Entry, _Member]]:
    if not root.is_dir():
        raise ImageBuildError(f"image root {root} is not a directory")
    members: dict[str, _Member] = {}
    for path, rel, st in _walk(root):
        member = _member(path, rel, st, mtime, preserve_owner)
        if member is not None:
            members[rel] = member
    for entry in extra:
        rel = cpio.normalize_path(entry.path)
        old = members.get(rel)
        if old is not None and old.entry.is_dir and not entry.is_dir:
            raise ImageBuildError(f"{rel} is a directory in the image tree; cannot replace it")
        members[rel] = _Member(entry)
    ordered = cpio.prepare(m.entry for m in members.values())
    return [(e, members.get(e.path) or _Member(e)) for e in ordered]


def _copy(member: _Member, out: cpio.Sink, written: int, progress: Progress | None) -> int:
    assert member.source is not None
    copied = 0
    with member.source.open("rb") as f:
        while chunk := f.read(min(CHUNK, member.size - copied + 1)):
            copied += len(chunk)
            if copied > member.size:
                break
            out.write(chunk)
            if progress:
                progress(written + copied)
    if copied != member.size:
        raise ImageBuildError(f"{member.source} changed size while it was archived")
    return copied


def write_tree(root: Path, out: cpio.Sink, *, extra: Iterable[cpio.Entry] = (), mtime: int = 0,
               preserve_owner: bool = False, progress: Progress | None = None) -> int:
    """Write the cpio of `root` (plus `extra`) to `out`; return the bytes written.

    `progress` is called with the running total of bytes written.
    """
    written = 0
    for ino, (entry, member) in enumerate(_collect(root, extra, mtime, preserve_owner), start=1):
        if member.source is None:
            data = b"" if entry.is_dir else entry.data
            chunk = cpio.header(entry, entry.ino or ino, len(data)) + data
            out.write(chunk)
            written += len(chunk)
            size = len(data)
        else:
            head = cpio.header(entry, ino, member.size)
            out.write(head)
            written += len(head)
            written += _copy(member, out, written, progress)
            size = member.size
        pad = cpio.padding(size)
        out.write(pad)
        written += len(pad)
        if progress:
            progress(written)
    end = cpio.trailer()
    out.write(end)
    return written + len(end)


def write_tree_file(root: Path, dst: Path, *, extra: Iterable[cpio.Entry] = (), mtime: int = 0,
                    preserve_owner: bool = False, progress: Progress | None = None) -> int:
    """`write_tree` into the file `dst`, written beside it and renamed into place on success,
    so a failure (a full disk included) never leaves a truncated archive under the real name."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            n = write_tree(root, out, extra=extra, mtime=mtime, preserve_owner=preserve_owner,
                           progress=progress)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
