"""HA benchmark: several head nodes on one etcd. The failover gap, and DHCP throughput with two
heads against one.

    sudo .venv/bin/python bench/ha.py [--rounds 5] [--period 5] [--clients 5000]
                                      [--start-rate 500] [--max-rate 16000] [--bisect 2]
                                      [--json FILE]
    sudo .venv/bin/python bench/ha.py --rounds 1 --period 2 --start-rate 100 --max-rate 100 \
                                      --bisect 0                                   # quick

Needs root, iproute2, perfdhcp (Debian kea-admin), etcd (etcd-server) and curl.

What it does:
- one server namespace and one client namespace joined by a veth (bench/peers/testbed.py,
  subnet 10.0.0.0/8); etcd (one member, fresh data dir each time) and the heads run in the
  server namespace, each head `python -m provisioner serve` on the server veth with an address
  of its own (the DHCP server id), `[ha] ttl` 3 s; the clients in the client namespace.
  Nothing leaves the namespaces.
- failover gap, --rounds times (median): two fresh heads; once each has seen the other, the
  probe (bench/peers/failover.py) SIGKILLs head-1 by PID and broadcasts a DISCOVER every 50 ms
  from clients of head-1's buckets (ha/buckets.py) until head-0 OFFERs: the time from the
  kill to that OFFER. Target: under 5 s.
- throughput: perfdhcp (broadcast DORA as a relay agent, --clients distinct clients) against
  one head, then two heads on one etcd (both hear every DISCOVER, each answers its buckets): the
  highest offered rate with < 1 % of exchanges lost (bench/peers/perfdhcp.py's search), and
  the DORA/s at it. Target: two heads >= 1x one head.
Every process it starts is stopped by PID and both namespaces are deleted at the end, also on
failure, Ctrl-C or SIGTERM. Bounds: every wait has a limit (a head 30 s to start, a failover
round 30 s, a perfdhcp run --period + 31 s).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
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

from bench.peers import dhcpd, perfdhcp  # noqa: E402
from bench.peers.etcd import Etcd  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402
from provisioner.ha.buckets import assign, bucket_of  # noqa: E402

SUBNET = "10.0.0.0/8"
POOL = dhcpd.Pool(SUBNET, "10.1.0.0", "10.255.255.254", "255.0.0.0")
TTL = 3.0
HEADS = 2
PROBE_MACS = 64
PROBE_INTERVAL = 0.05  # s between the probe's DISCOVERs
FAILOVER_LIMIT = 30.0  # s: a round without an OFFER by then counts as failed
TARGET_GAP = 5.0


class Heads:
    """Starts etcd and `count` fresh heads for each measurement, in the bed's server namespace;
    `settings` (PROVISIONER_* variables) override the heads' settings."""

    def __init__(self, bed: Testbed, work: Path, settings: dict[str, str] | None = None) -> None:
        self.bed = bed
        self.work = work
        self.settings = settings or {}
        # + 10 and on: server + 1 is the client side's address
        self.addresses = [bed.server_ip] + [bed.add_server_address(9 + i)
                                            for i in range(1, HEADS)]
        self.started = 0

    def start(self, count: int) -> list[subprocess.Popen[Any]]:
        """The heads (head-0 first) and etcd last; returns once every head has seen all."""
        self.started += 1
        work = self.work / f"run-{self.started}"
        etcd = Etcd(self.bed, work / "etcd")
        etcd.start()
        assert etcd.proc is not None
        heads = [self._head(i, work / f"head-{i}", etcd.endpoint) for i in range(count)]
        for i, proc in enumerate(heads):
            dhcpd.wait_for_text(proc, work / f"head-{i}" / "stdout.log",
                                f"ha: {count} live head(s)")
        return [*heads, etcd.proc]

    def _head(self, index: int, work: Path, endpoint: str) -> subprocess.Popen[Any]:
        work.mkdir(parents=True)
        address = self.addresses[index]
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(work / "data"),
               "PROVISIONER_CONFIG": "", "PROVISIONER_DHCP_MODE": "full",
               "PROVISIONER_DHCP_INTERFACE": self.bed.server_if, "PROVISIONER_DHCP_PORT": "67",
               "PROVISIONER_DHCP_SERVER_IP": address,
               # perfdhcp and the probe fill giaddr with their own address (relay agents)
               "PROVISIONER_DHCP_SUBNETS": json.dumps([{
                   "network": POOL.subnet, "pool_start": POOL.first, "pool_end": POOL.last,
                   "relay": self.bed.client_ip}]),
               "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_BOOT_LISTEN": address,
               "PROVISIONER_BOOT_PORT": "18069", "PROVISIONER_STORE_BACKEND": "etcd",
               "PROVISIONER_STORE_ENDPOINTS": endpoint, "PROVISIONER_HA_NAME": f"head-{index}",
               "PROVISIONER_HA_TTL": str(TTL), "PYTHONPATH": str(ROOT), **self.settings}
        return self.bed.spawn_server([sys.executable, "-m", "provisioner", "serve", "--listen",
                                      address, "--port", "18099", "--log-level", "info"],
                                     work / "stdout.log", env=env, cwd=work)

    def stop(self, procs: list[subprocess.Popen[Any]]) -> None:
        for proc in procs:  # the heads, then etcd
            self.bed.stop(proc)


def victim_macs(victim: str) -> list[str]:
    """MACs whose bucket belongs to `victim` among head-0..head-{HEADS-1}."""
    table = assign(f"head-{i}" for i in range(HEADS))
    found: list[str] = []
    while len(found) < PROBE_MACS:
        mac = bytes.fromhex("02") + secrets.token_bytes(5)
        if table[bucket_of(mac)] == victim:
            found.append(mac.hex())
    return found


def failover_round(heads: Heads) -> float | None:
    procs = heads.start(HEADS)
    try:
        args = {"ifname": heads.bed.client_if, "relay": heads.bed.client_ip,
                "victim_pid": procs[1].pid, "victim_ip": heads.addresses[1],
                "macs": victim_macs("head-1"), "interval": PROBE_INTERVAL,
                "limit": FAILOVER_LIMIT}
        done = subprocess.run(heads.bed.client([sys.executable, "-m", "bench.peers.failover"]),
                              input=json.dumps(args), capture_output=True, text=True,
                              timeout=FAILOVER_LIMIT + 30, check=False, cwd=ROOT)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise SystemExit(f"the failover probe failed: {done.stderr.strip()[-500:]}")
        result = json.loads(lines[-1])
        gap = result["gap"]
        print(f"  failover: {'none' if gap is None else f'{gap:.2f} s'} "
              f"({result['sent']} DISCOVERs)", flush=True)
        return float(gap) if gap is not None else None
    finally:
        heads.stop(procs)


def throughput(heads: Heads, count: int, opts: argparse.Namespace) -> dict[str, Any]:
    load = perfdhcp.Load(opts.period, opts.clients)

    def measure_at(rate: int) -> perfdhcp.Run:
        run = perfdhcp.measure(heads.bed, lambda: heads.start(count), load, rate)
        print(f"  {count} head(s) {run.line()}", flush=True)
        return run

    steps, best = perfdhcp.search(measure_at, opts.start_rate, opts.max_rate, opts.bisect)
    at_best = [r for r in steps if r.rate == best and r.passes]
    return {"max_rate": best, "dora_per_s": max((r.dora_per_s for r in at_best), default=0.0),
            "steps": [{"rate": r.rate, "dora_per_s": r.dora_per_s, "drop_pct": r.drop_pct}
                      for r in steps]}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="failover rounds (median)")
    ap.add_argument("--period", type=int, default=5, help="seconds per perfdhcp run")
    ap.add_argument("--clients", type=int, default=5000, help="distinct clients (perfdhcp -R)")
    ap.add_argument("--start-rate", type=int, default=500)
    ap.add_argument("--max-rate", type=int, default=16000)
    ap.add_argument("--bisect", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    opts = ap.parse_args()
    if not (1 <= opts.rounds <= 20 and 1 <= opts.period <= 120 and 0 <= opts.bisect <= 8
            and 25 <= opts.start_rate <= opts.max_rate):
        ap.error("--rounds 1..20, --period 1..120, --bisect 0..8, 25 <= --start-rate <= "
                 "--max-rate")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    for tool in ("perfdhcp", "etcd", "curl", "ip"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (apt-get install kea-admin etcd-server curl iproute2)")
    return opts


def report(doc: dict[str, Any]) -> str:
    gaps = [g for g in doc["gaps"] if g is not None]
    median = statistics.median(gaps) if gaps else None
    one, two = doc["throughput"]["1"], doc["throughput"]["2"]
    ratio = two["dora_per_s"] / one["dora_per_s"] if one["dora_per_s"] else None
    each = ", ".join("-" if g is None else f"{g:.2f}" for g in doc["gaps"])
    met = median is not None and median < TARGET_GAP
    lines = [
        f"failover gap (SIGKILL of head-1 to head-0's first OFFER for its clients), ttl "
        f"{TTL:g} s: median {'-' if median is None else f'{median:.2f} s'} of "
        f"{len(doc['gaps'])} ({each}); target < {TARGET_GAP:g} s: {'met' if met else 'NOT met'}",
        f"throughput, 1 head: max rate {one['max_rate']}/s, {one['dora_per_s']:.0f} DORA/s",
        f"throughput, 2 heads: max rate {two['max_rate']}/s, {two['dora_per_s']:.0f} DORA/s",
        f"2 heads / 1 head: {'-' if ratio is None else f'{ratio:.2f}x'}; target >= 1x: "
        f"{'met' if ratio is not None and ratio >= 1 else 'NOT met'}",
    ]
    return "\n".join(lines)


def main() -> int:
    opts = parse_args()
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                           "nproc": os.cpu_count(), "ttl": TTL, "gaps": [], "throughput": {}}
    work = Path(tempfile.mkdtemp(prefix="pv-ha-bench-"))
    try:
        with Testbed.create(subnet=SUBNET) as bed:
            print(f"where: {bed.describe()}", flush=True)
            heads = Heads(bed, work)
            for _ in range(opts.rounds):
                doc["gaps"].append(failover_round(heads))
            for count in (1, 2):
                doc["throughput"][str(count)] = throughput(heads, count, opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if opts.json:
        opts.json.write_text(json.dumps(doc, indent=1))
    print()
    print(report(doc))
    return 0


if __name__ == "__main__":
    with unwinding():
        sys.exit(main())
