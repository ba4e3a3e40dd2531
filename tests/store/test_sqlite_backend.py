"""sqlite-only properties: a crash loses no committed write; watch works across processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from provisioner.store.sqlite import SqliteStore

WRITER = textwrap.dedent("""
    import asyncio, sys
    from provisioner.store.sqlite import SqliteStore

    async def main() -> None:
        store = SqliteStore(sys.argv[1])
        i = 0
        while True:
            # Several writers in flight, so the kill lands inside group commits.
            revs = await asyncio.gather(*(store.put(f"/k/{i + j:06d}", b"v" * 512)
                                          for j in range(8)))
            for j, rev in enumerate(revs):
                print(f"{i + j} {rev}", flush=True)
            i += 8

    asyncio.run(main())
""")


def test_kill_9_mid_write_loses_no_committed_write(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout is not None
    acknowledged: list[int] = []
    try:
        for line in proc.stdout:
            acknowledged.append(int(line.split()[0]))
            if len(acknowledged) >= 400:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(acknowledged) >= 400, "the writer did not get going"

    async def check() -> set[str]:
        store = SqliteStore(db)
        try:
            return {kv.key for kv in (await store.range("/k/")).items}
        finally:
            await store.close()

    present = asyncio.run(check())
    missing = [i for i in acknowledged if f"/k/{i:06d}" not in present]
    assert missing == []


async def test_watch_sees_another_process(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = SqliteStore(db)
    try:
        start = (await store.range("/x/")).revision + 1
        script = ("import asyncio, sys\nfrom provisioner.store.sqlite import SqliteStore\n"
                  "async def m():\n s = SqliteStore(sys.argv[1])\n"
                  " await s.put('/x/from-cli', b'hello')\n await s.close()\nasyncio.run(m())")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(db))
        assert await proc.wait() == 0
        async with asyncio.timeout(10):
            async for event in store.watch("/x/", start):
                assert (event.key, event.value) == ("/x/from-cli", b"hello")
                break
    finally:
        await store.close()


async def test_revision_counter_is_shared_between_two_handles(tmp_path: Path) -> None:
    one, two = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    try:
        revs = await asyncio.gather(
            *(s.put(f"/r/{i}", b"x") for i in range(20) for s in (one, two)))
        assert sorted(revs) == list(range(1, 41))
    finally:
        await one.close()
        await two.close()


async def test_a_new_store_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "store.db")
        await store.put("/k", b"power_password=secret")
        files = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        await store.close()
    finally:
        os.umask(previous)
    assert files.get("store.db") == 0o600 and files.get("store.db-wal") == 0o600, files
