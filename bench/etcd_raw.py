"""The raw aetcd client's rates against an etcd endpoint: the baseline for our etcd backend.

bench/store.py prints these beside `EtcdStore`'s rates from the same run, so the overhead of our
layer (key checks, namespace, timeouts, error mapping, result conversion) is measured against the
same server under the same load. Each rate is a bounded loop: at most `count` operations and at
most `max_seconds`, whichever ends first.

    rates = asyncio.run(raw_rates("127.0.0.1:2379"))
    # {"put": 2310.0, "get": 2950.1, "cas": 2011.4, "put_x16": 7412.9, ...}  (operations/s)

`store_rates(store)` runs the same measurements through any `KeyValueStore` (EtcdStore, sqlite,
memory) with the same result keys, and `measure()` is the backend-neutral loop under both.

Run directly for a quick raw-vs-ours check against a throw-away etcd (bench/peers/etcd.py, on
127.0.0.1): `python bench/etcd_raw.py [--count N] [--runs N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import aetcd  # noqa: E402

from provisioner.store.base import KeyValueStore  # noqa: E402

COUNT = 2000  # operations per measurement
CONCURRENCY = 16
MAX_SECONDS = 10.0  # per measurement, so a slow or shared machine cannot stall the benchmark
VALUE = b"x" * 200  # about the size of a node record's hot fields
PREFIX = b"/bench/raw"

Operation = Callable[[int, int], Awaitable[object]]  # (worker, iteration) -> awaitable


async def measure(
    operation: Operation,
    *,
    count: int = COUNT,
    concurrency: int = 1,
    max_seconds: float = MAX_SECONDS,
) -> float:
    """Operations per second: `concurrency` workers share `count` calls, each worker sequential.

    The calls are split evenly; a worker stops early once `max_seconds` have passed, and the rate
    counts only the calls that were made.
    """
    done = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(index: int) -> None:
        nonlocal done
        for i in range(count // concurrency):
            await operation(index, i)
            done += 1
            if time.perf_counter() > deadline:
                return

    began = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - began
    return done / elapsed if elapsed > 0 else 0.0


def _client(endpoint: str) -> Any:
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    return aetcd.Client(host=host, port=int(port))


async def raw_rates(
    endpoint: str,
    *,
    count: int = COUNT,
    concurrency: int = CONCURRENCY,
    max_seconds: float = MAX_SECONDS,
) -> dict[str, float]:
    """Puts, gets and CAS transactions per second through the bare aetcd client.

    Keys: one per worker under /bench/raw (overwritten, so the database stays small). Results:
    `put`, `get`, `cas` for one sequential client and `put_x16`, `get_x16`, `cas_x16` for
    `concurrency` concurrent workers sharing one client (the suffix follows `concurrency`).
    The CAS is what `EtcdStore.put(key, value, expect=rev)` does: a Txn comparing mod_revision,
    chained on the revision the previous one returned.
    """
    client = _client(endpoint)
    txn = client.transactions
    revisions: dict[int, int] = {}

    def key(worker: int) -> bytes:
        return b"%s/%d" % (PREFIX, worker)

    async def put(worker: int, _: int) -> None:
        await client.put(key(worker), VALUE)

    async def get(worker: int, _: int) -> None:
        await client.get(key(worker))

    async def cas(worker: int, _: int) -> None:
        succeeded, responses = await client.transaction(
            compare=[txn.mod(key(worker)) == revisions[worker]],
            success=[txn.put(key(worker), VALUE)],
            failure=[],
        )
        if not succeeded:
            raise RuntimeError(f"benchmark CAS on {key(worker)!r} lost a race it cannot have")
        revisions[worker] = responses[0].response_put.header.revision

    async def reset(workers: int) -> None:
        for w in range(workers):
            revisions[w] = (await client.put(key(w), VALUE)).header.revision

    results: dict[str, float] = {}
    try:
        for workers, suffix in ((1, ""), (concurrency, f"_x{concurrency}")):
            await reset(workers)
            for name, operation in (("put", put), ("get", get)):
                results[name + suffix] = await measure(
                    operation, count=count, concurrency=workers, max_seconds=max_seconds
                )
            await reset(workers)  # the put loop moved the revisions the CAS chain starts from
            results["cas" + suffix] = await measure(
                cas, count=count, concurrency=workers, max_seconds=max_seconds
            )
        await client.delete_prefix(PREFIX)
    finally:
        await client.close()
    return results


async def store_rates(
    store: KeyValueStore,
    *,
    count: int = COUNT,
    concurrency: int = CONCURRENCY,
    max_seconds: float = MAX_SECONDS,
) -> dict[str, float]:
    """The same measurements as `raw_rates`, through any `KeyValueStore` (same result keys)."""
    revisions: dict[int, int] = {}

    def key(worker: int) -> str:
        return f"/bench/ours/{worker}"

    async def put(worker: int, _: int) -> None:
        await store.put(key(worker), VALUE)

    async def get(worker: int, _: int) -> None:
        await store.get(key(worker))

    async def cas(worker: int, _: int) -> None:
        revisions[worker] = await store.put(key(worker), VALUE, expect=revisions[worker])

    async def reset(workers: int) -> None:
        for w in range(workers):
            revisions[w] = await store.put(key(w), VALUE)

    results: dict[str, float] = {}
    for workers, suffix in ((1, ""), (concurrency, f"_x{concurrency}")):
        await reset(workers)
        for name, operation in (("put", put), ("get", get)):
            results[name + suffix] = await measure(
                operation, count=count, concurrency=workers, max_seconds=max_seconds
            )
        await reset(workers)
        results["cas" + suffix] = await measure(
            cas, count=count, concurrency=workers, max_seconds=max_seconds
        )
    return results


async def _quick_check(count: int, rounds: int) -> None:
    """Raw aetcd vs EtcdStore puts, gets and CAS against a throw-away etcd server: alternating
    rounds, median of each (a shared machine swings single runs by 15% either way)."""
    import statistics
    import tempfile

    from bench.peers.etcd import Etcd
    from bench.peers.testbed import Testbed
    from provisioner.store.etcd import EtcdStore

    raw: dict[str, list[float]] = {}
    ours: dict[str, list[float]] = {}
    with (tempfile.TemporaryDirectory() as tmp, Testbed.create(loopback=True) as bed,
          Etcd(bed, Path(tmp)) as server):
        store = EtcdStore([server.endpoint], namespace="/bench")
        try:
            for _ in range(rounds):
                for name, rate in (await raw_rates(server.endpoint, count=count)).items():
                    raw.setdefault(name, []).append(rate)
                for name, rate in (await store_rates(store, count=count)).items():
                    ours.setdefault(name, []).append(rate)
        finally:
            await store.close()
    print(f"{'operation':<12}{'raw aetcd/s':>14}{'EtcdStore/s':>14}{'overhead':>10}")
    for name, rates in raw.items():
        mine, theirs = statistics.median(ours[name]), statistics.median(rates)
        overhead = (theirs - mine) / theirs * 100 if theirs else 0.0
        print(f"{name:<12}{theirs:>14.0f}{mine:>14.0f}{overhead:>9.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=_quick_check.__doc__)
    parser.add_argument("--count", type=int, default=COUNT, help="operations per measurement")
    parser.add_argument("--runs", "--rounds", dest="rounds", type=int, default=3,
                        help="alternating rounds (median)")
    args = parser.parse_args()
    from bench.peers.testbed import unwinding

    with unwinding():
        asyncio.run(_quick_check(args.count, args.rounds))


if __name__ == "__main__":
    main()
