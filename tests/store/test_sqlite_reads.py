"""The sqlite store reads ranges in a worker thread: the event loop (DHCP, TFTP) keeps running
while a range of 100k keys is read."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from provisioner.store.base import TxnOp
from provisioner.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

KEYS = 100_000
TICK = 0.005


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    """How late each tick of TICK seconds wakes: the loop's lag."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(loop.time() - due)


async def test_a_large_range_leaves_the_loop_responsive(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", synchronous="OFF", timeout=60)
    try:
        value = b"x" * 100
        for at in range(0, KEYS, 10_000):
            await store.txn([TxnOp(f"/big/k{i:06d}", value) for i in range(at, at + 10_000)])
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(lags, stop))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await store.range("/big/")
        took = loop.time() - started
        stop.set()
        await ticker
        assert len(result.items) == KEYS
        worst = max(lags)
        log.info("range of %d keys took %.3f s; worst loop lag %.1f ms over %d ticks",
                 KEYS, took, worst * 1000, len(lags))
        # Read inline, the loop would be stalled for the whole read (`took`); a generous bound
        # for a shared machine, far below that.
        assert worst < max(0.5, took / 2), (worst, took)
        assert len(lags) >= 3  # the ticker ran during the read
    finally:
        await store.close()
