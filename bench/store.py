"""Store benchmark: puts, gets and CAS updates per second, our backends against the raw etcd client.

    .venv/bin/python bench/store.py [--ops 2000] [--runs 3] [--nodes 10000] [--json FILE]
    .venv/bin/python bench/store.py --runs 1 --ops 500 --nodes 2000     # quick

What it prints (each figure the median of --rounds runs, in one process, in one run):
- sqlite (the embedded default, synchronous=FULL: every write durable before it returns) and
  etcd through our backend: ops/s single client (one request at a time) and 16 concurrent.
- the raw aetcd client against the same etcd (the peer: bench/peers/etcd.py starts a one-member
  etcd on 127.0.0.1), same shapes, and our overhead over it.
- 10,000 nodes: `provisioner node list --json` wall time (a fresh process each time, as a user
  runs it) and the inventory's cached lookup by MAC (median of single lookups, microseconds).

Bounds: every loop is a fixed count (--ops), etcd runs on 127.0.0.1 only, started here in a
temporary directory and stopped at the end. These machines are shared: read the medians and
ratios, not single figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench import etcd_raw  # noqa: E402
from bench.peers.etcd import Etcd  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402
from provisioner.inventory.repository import Inventory  # noqa: E402
from provisioner.nodes.model import MacAddress, Node  # noqa: E402
from provisioner.store.etcd import EtcdStore  # noqa: E402
from provisioner.store.sqlite import SqliteStore  # noqa: E402

CONCURRENCY = 16


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


async def bench_sqlite(ops: int, rounds: int, workdir: Path) -> dict[str, float]:
    runs = []
    for r in range(rounds):
        store = SqliteStore(workdir / f"bench-{r}.db")
        try:
            runs.append(await etcd_raw.store_rates(store, count=ops, concurrency=CONCURRENCY))
        finally:
            await store.close()
    return median_of(runs)


async def bench_etcd(endpoint: str, ops: int, rounds: int) -> tuple[dict[str, float], ...]:
    """Ours and the raw client in alternating rounds, so drifting load hits both alike."""
    ours, raw = [], []
    for _ in range(rounds):
        store = EtcdStore([endpoint], timeout=5.0)
        try:
            ours.append(await etcd_raw.store_rates(store, count=ops, concurrency=CONCURRENCY))
        finally:
            await store.close()
        raw.append(await etcd_raw.raw_rates(endpoint, count=ops, concurrency=CONCURRENCY))
    return median_of(ours), median_of(raw)


async def populate(db: Path, count: int) -> None:
    store = SqliteStore(db)
    inventory = Inventory(store)
    sem = asyncio.Semaphore(64)

    async def add(i: int) -> None:
        mac = MacAddress(f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                         f"{i & 255:02x}")
        node = Node(mac, f"node{i:05d}", groups=("compute",), image="compute:1",
                    hardware={"cpus": 64, "memory_mib": 262144})
        async with sem:
            await inventory.add_node(node)

    await asyncio.gather(*(add(i) for i in range(count)))
    await store.close()


def bench_node_list(db: Path, rounds: int) -> float:
    env = {**os.environ, "PROVISIONER_STORE_PATH": str(db), "PROVISIONER_CONFIG": ""}
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "provisioner", "node", "list", "--json"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def bench_lookup(db: Path, lookups: int) -> float:
    store = SqliteStore(db)
    inventory = Inventory(store)
    await inventory.start()
    macs = [n.mac for n in inventory.cached_nodes()]
    random.seed(7)
    samples = []
    for mac in random.choices(macs, k=lookups):
        started = time.perf_counter_ns()
        found = inventory.node_by_mac(mac)
        samples.append(time.perf_counter_ns() - started)
        assert found is not None
    await inventory.stop()
    await store.close()
    return statistics.median(samples) / 1000


def table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    keys = list(next(iter(rows.values())))
    print(f"  {'':18}" + "".join(f"{k:>11}" for k in keys))
    for name, values in rows.items():
        print(f"  {name:18}" + "".join(f"{values[k]:>11,.0f}" for k in keys))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--runs", "--rounds", dest="rounds", type=int, default=3,
                        help="runs per figure (medians)")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        work = Path(tmp)
        results["sqlite"] = await bench_sqlite(args.ops, args.rounds, work)
        with Testbed.create(loopback=True) as bed, Etcd(bed, work / "etcd") as etcd:
            results["etcd (ours)"], results["etcd (raw aetcd)"] = await bench_etcd(
                etcd.endpoint, args.ops, args.rounds)
        table(f"ops/s, median of {args.rounds} runs of {args.ops} ops (plain = one at a time, "
              f"_x{CONCURRENCY} = {CONCURRENCY} in flight)", results)
        ours, raw = results["etcd (ours)"], results["etcd (raw aetcd)"]
        overhead = {k: 100 * (1 - ours[k] / raw[k]) for k in ours}
        print("\n  etcd backend overhead over the raw client (%, target < 20):")
        print("  " + "  ".join(f"{k} {v:+.1f}" for k, v in overhead.items()))
        results["etcd overhead %"] = overhead
        db = work / "nodes.db"
        await populate(db, args.nodes)
        results["node_list_json_s"] = bench_node_list(db, args.rounds)
        results["lookup_by_mac_us"] = await bench_lookup(db, 10_000)
    print(f"\n{args.nodes:,} nodes: `provisioner node list --json` "
          f"{results['node_list_json_s']:.3f} s (target < 1 s); cached lookup by MAC "
          f"{results['lookup_by_mac_us']:.2f} us median (target < 20 us)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    with unwinding():
        asyncio.run(main())
