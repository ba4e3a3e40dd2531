"""Streaming a tree on disk into newc: reproducible, equal to cpio.pack, readable by GNU cpio."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError
from provisioner.images.format import archive, cpio


def _make_tree(root: Path, mtime: int) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(b"B" * 3_000_001)
    (root / "bin/busybox").chmod(0o4755)
    (root / "bin/sh").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("node\n")
    os.link(root / "etc/hostname", root / "etc/hostname.hard")
    os.mkfifo(root / "fifo")
    (root / "zz-empty-dir").mkdir()
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _sha(root: Path, mtime: int = 0) -> str:
    buf = io.BytesIO()
    archive.write_tree(root, buf, mtime=mtime)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_same_tree_twice_gives_the_same_bytes_despite_mtimes(tmp_path: Path) -> None:
    _make_tree(tmp_path / "a", 1_000_000)
    _make_tree(tmp_path / "b", 2_000_000)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b")
    assert _sha(tmp_path / "a", mtime=5) != _sha(tmp_path / "a")


def test_matches_pack_of_the_same_entries(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_tree(root, 1)
    init = cpio.file("init", b"#!/bin/sh\n", 0o755)
    buf = io.BytesIO()
    n = archive.write_tree(root, buf, extra=[init, cpio.chardev("dev/console", 5, 1)])
    assert n == len(buf.getvalue())
    members = cpio.unpack(buf.getvalue())
    assert cpio.pack(members) == buf.getvalue()
    got = {m.path: m for m in members}
    assert got["bin/busybox"].mode == stat.S_IFREG | 0o4755
    assert got["bin/busybox"].data == b"B" * 3_000_001
    assert got["bin/sh"].data == b"busybox"
    assert got["etc/hostname.hard"].data == b"node\n"
    assert stat.S_ISFIFO(got["fifo"].mode)
    assert got["dev"].is_dir and got["dev/console"].rdev_major == 5
    assert got["init"].data == b"#!/bin/sh\n"
    assert {m.uid for m in members} == {0} and {m.mtime for m in members} == {0}


def test_extra_entries_replace_files_of_the_tree(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("old")
    buf = io.BytesIO()
    archive.write_tree(tmp_path, buf, extra=[cpio.file("/etc/hostname", b"new")])
    assert [(m.path, m.data) for m in cpio.unpack(buf.getvalue())] == [
        ("etc", b""), ("etc/hostname", b"new")]
    with pytest.raises(ImageBuildError, match="etc is a directory"):
        archive.write_tree(tmp_path, io.BytesIO(), extra=[cpio.file("etc", b"x")])


def test_progress_reports_a_growing_total_ending_at_the_size(tmp_path: Path) -> None:
    _make_tree(tmp_path / "t", 1)
    seen: list[int] = []
    dst = tmp_path / "out.cpio"
    total = archive.write_tree_file(tmp_path / "t", dst, progress=seen.append)
    assert seen == sorted(seen) and len(seen) > 5
    assert seen[-1] + len(cpio.trailer()) == total == dst.stat().st_size
    assert not list(tmp_path.glob(".out.cpio.tmp*"))


def test_gnu_cpio_extracts_the_tree(tmp_path: Path) -> None:
    _make_tree(tmp_path / "t", 1)
    archive.write_tree_file(tmp_path / "t", tmp_path / "out.cpio")
    dest = tmp_path / "x"
    dest.mkdir()
    with (tmp_path / "out.cpio").open("rb") as f:
        subprocess.run(["cpio", "-i", "--quiet"], stdin=f, cwd=dest, check=True)
    assert (dest / "bin/busybox").stat().st_size == 3_000_001
    assert (dest / "bin/sh").readlink() == Path("busybox")
    assert stat.S_ISFIFO((dest / "fifo").lstat().st_mode)


def test_missing_root_is_an_image_build_error(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="is not a directory"):
        archive.write_tree(tmp_path / "nope", io.BytesIO())
    assert not (tmp_path / "o.cpio").exists()
