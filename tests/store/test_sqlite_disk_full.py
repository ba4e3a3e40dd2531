"""The sqlite store on a full disk (a small tmpfs the test mounts): a write fails with a clear
error, what was committed stays readable, nothing is corrupted, and once space is freed writes
go on. Needs root (mount)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import StoreUnavailable
from provisioner.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
VALUE = os.urandom(4096)  # random: sqlite cannot store it in less than a page


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
                   check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with a filler file; return it (delete it to free space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:  # unbuffered: each write meets ENOSPC
        for size in (65536, 1):  # the large writes, then the last few bytes
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)
    probe = disk / "probe"
    with pytest.raises(OSError) as full:
        probe.write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    probe.unlink(missing_ok=True)
    return filler


async def test_a_full_disk_fails_the_write_clearly_keeps_what_was_written_and_recovers(
        small_disk: Path) -> None:
    db = small_disk / "store.db"
    store = SqliteStore(db)
    try:
        written = {f"/nodes/{i:04d}": VALUE for i in range(64)}
        for key, value in written.items():
            await store.put(key, value)
        filler = fill(small_disk)
        failures = []
        for i in range(32):  # the WAL may still have room for a few: write until it has not
            try:
                await store.put(f"/events/{i:04d}", VALUE)
            except StoreUnavailable as exc:
                failures.append(str(exc))
                break
        assert failures, "no write failed on a full disk"
        assert "store.db write failed" in failures[0] and "full" in failures[0], failures[0]
        for key, value in written.items():  # what was committed is still served
            got = await store.get(key)
            assert got is not None and got.value == value
        filler.unlink()
        revision = await store.put("/nodes/after", VALUE)
        assert revision > 0
        got = await store.get("/nodes/after")
        assert got is not None and got.value == VALUE
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        keys = {row[0] for row in check.execute("SELECT key FROM kv")}
    assert set(written) | {"/nodes/after"} <= keys
