"""newc writer/reader: round trip, reproducibility, and GNU cpio reading what we write."""

from __future__ import annotations

import io
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError, ImageError
from provisioner.images.format import cpio

ENTRIES = [
    cpio.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
    cpio.symlink("bin/sh", "busybox"),
    cpio.directory("dev"),
    cpio.chardev("dev/console", 5, 1),
    cpio.chardev("dev/null", 1, 3, 0o666),
    cpio.file("init", b"#!/bin/sh\nexec /bin/sh\n", 0o755),
    cpio.file("etc/provisioner/token", b"secret", 0o600),
    cpio.file("empty", b""),
]


def test_round_trip_keeps_every_field() -> None:
    got = {e.path: e for e in cpio.unpack(cpio.pack(ENTRIES))}
    for entry in ENTRIES:
        back = got[entry.path]
        assert (back.mode, back.data, back.uid, back.gid, back.mtime) == (
            entry.mode, entry.data, 0, 0, 0)
        assert (back.rdev_major, back.rdev_minor) == (entry.rdev_major, entry.rdev_minor)
    # Missing parents were synthesised as 0755 directories.
    assert got["etc"].mode == stat.S_IFDIR | 0o755
    assert got["etc/provisioner"].is_dir


def test_order_is_sorted_parents_first_and_inodes_sequential() -> None:
    members = cpio.unpack(cpio.pack(reversed(ENTRIES)))
    paths = [m.path for m in members]
    assert paths == sorted(paths, key=cpio.sort_key)
    for i, path in enumerate(paths):
        if "/" in path:
            assert path.rsplit("/", 1)[0] in paths[:i]
    assert [m.ino for m in members] == list(range(1, len(members) + 1))


def test_same_entries_in_any_order_give_the_same_bytes() -> None:
    assert cpio.pack(ENTRIES) == cpio.pack(list(reversed(ENTRIES)))
    assert cpio.pack(ENTRIES) == cpio.pack(ENTRIES)


def test_alignment_and_trailer() -> None:
    data = cpio.pack([cpio.file("a", b"x")])
    assert len(data) % 4 == 0
    assert data.startswith(b"070701")
    assert b"TRAILER!!!\0" in data[-128:]


def test_write_streams_the_same_bytes_as_pack() -> None:
    buf = io.BytesIO()
    n = cpio.write(ENTRIES, buf)
    assert n == len(buf.getvalue())
    assert buf.getvalue() == cpio.pack(ENTRIES)


def test_unpack_reads_concatenated_archives_like_the_kernel() -> None:
    first = cpio.pack([cpio.file("a", b"1")])
    second = cpio.pack([cpio.file("b", b"22")])
    paths = [e.path for e in cpio.unpack(first + b"\0" * 8 + second)]
    assert paths == ["a", "b"]


@pytest.mark.parametrize("path", ["", "/", "../etc/passwd", "a/../../b"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ImageBuildError, match="invalid path"):
        cpio.pack([cpio.file(path, b"")])


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ImageBuildError, match="duplicate path in image: a/b"):
        cpio.pack([cpio.file("a/b", b"1"), cpio.file("/a/b", b"2")])


def test_leading_slash_is_normalised() -> None:
    assert [e.path for e in cpio.unpack(cpio.pack([cpio.file("/init", b"")]))] == ["init"]


def test_garbage_is_refused() -> None:
    with pytest.raises(ImageError, match="not a newc cpio member at offset 0"):
        cpio.unpack(b"garbage" * 20)


def test_gnu_cpio_lists_and_extracts_what_we_write(tmp_path: Path) -> None:
    data = cpio.pack(ENTRIES)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == [e.path for e in cpio.unpack(data)]
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-i", "--quiet", "--no-absolute-filenames"], input=data, cwd=dest,
                   check=True, capture_output=True)
    assert (dest / "bin/busybox").read_bytes() == ENTRIES[0].data
    assert (dest / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert (dest / "bin/sh").readlink() == Path("busybox")
    assert (dest / "etc/provisioner/token").stat().st_mode & 0o777 == 0o600
    console = (dest / "dev/console").lstat()
    assert stat.S_ISCHR(console.st_mode)
    assert (console.st_rdev >> 8, console.st_rdev & 0xFF) == (5, 1)


def test_we_read_what_gnu_cpio_writes(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"hello")
    (tmp_path / "d/l").symlink_to("f")
    data = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"d\nd/f\nd/l\n",
                          cwd=tmp_path, capture_output=True, check=True).stdout
    got = {e.path: e for e in cpio.unpack(data)}
    assert got["d/f"].data == b"hello"
    assert got["d/l"].data == b"f" and stat.S_ISLNK(got["d/l"].mode)
    assert got["d"].is_dir
