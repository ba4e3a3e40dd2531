"""DHCP benchmark: provisioner's DHCP server against Kea and dnsmasq, driven by Kea's perfdhcp.

    sudo .venv/bin/python bench/dhcp.py [--servers kea,dnsmasq,dnsmasq-noping,sqlite,etcd]
                                        [--period 10] [--runs 3] [--json FILE]
    sudo .venv/bin/python bench/dhcp.py --runs 1 --period 5 --bisect 2 \
                                        --servers kea,dnsmasq-noping,sqlite,etcd     # quick
    sudo .venv/bin/python bench/dhcp.py --servers sqlite --fixed-rate 3500 --ab ../other-checkout

The last form measures a change: provisioner from this checkout and from another one (say a
`git worktree` of the commit before), interleaved at one fixed rate, --runs times each.

Needs root, iproute2, perfdhcp (Debian kea-admin), kea-dhcp4 (kea-dhcp4-server), dnsmasq
(dnsmasq-base), etcd (etcd-server) and curl. The peers are started by bench/peers.

What it does, in one run:
- one server namespace and one client namespace joined by a veth (bench/peers/testbed.py,
  random names; subnet 10.0.0.0/8, pool 10.1.0.0-10.255.255.254); every server runs in the
  server namespace, perfdhcp in the client namespace (broadcast DORA with --clients distinct
  simulated clients). Nothing leaves the namespaces.
- for each server (bench/peers/perfdhcp.py): the highest offered rate that passes (< 1 % of
  exchanges lost, the generator really sent 95 % of the rate), by doubling from --start-rate and
  bisecting, then --runs confirmation runs at that rate (median), then --runs runs at the
  comparison rate = half of Kea's max rate, which gives p50/p99 of DISCOVER->OFFER and
  REQUEST->ACK at a like-for-like load (left out for a server whose max rate is below it, where
  it would only measure overload).
- every measurement starts a fresh server with an empty lease database and stops it by PID:
  kea        kea-dhcp4, memfile (persist=true, lease file on disk), one thread
  dnsmasq    dnsmasq as shipped (ICMP ping check before each offer), dnsmasq-noping without it
  sqlite     `python -m provisioner serve` with the embedded sqlite store (WAL, synchronous=FULL:
             every lease is fsynced before its ACK; concurrent binds share one commit)
  etcd       the same with the etcd store; etcd (one member, fresh data dir) runs inside the server
             namespace on its loopback, so its traffic stays in the namespace too
- a run disturbed by more than 0.3 cores of background CPU is flagged (bg column).
Prints a table (rates, latency percentiles, server CPU per 1000 DORA, ratios to Kea).

Bounds: each perfdhcp run lasts --period s and is killed after period + 31 s; the search stops
at --max-rate with a fixed number of bisections; a server must answer within 30 s of start; the
script waits at most 10 min for other benchmarks (bench/tftp.py, http.py, store.py) to finish
before it starts. At the end, also on failure, Ctrl-C or SIGTERM, every process it started is
stopped by PID and both namespaces are deleted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.peers import dhcpd, perfdhcp  # noqa: E402
from bench.peers.etcd import Etcd  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402

SUBNET = "10.0.0.0/8"
POOL = dhcpd.Pool(SUBNET, "10.1.0.0", "10.255.255.254", "255.0.0.0")
OTHER_BENCH = r"bench/(tftp|http|store)\.py"
ALL = (*dhcpd.KINDS, "sqlite", "etcd")
OURS = ("sqlite", "etcd")


class Servers:
    """Starts a fresh server of one kind for each measurement, in the bed's server namespace."""

    def __init__(self, bed: Testbed, work: Path) -> None:
        self.bed = bed
        self.work = work
        self.tree = ROOT  # the source tree `python -m provisioner` runs from (--ab switches it)

    def start(self, name: str) -> list[subprocess.Popen[Any]]:
        work = self.work / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if name in dhcpd.KINDS:
            return [dhcpd.start(self.bed, name, work, POOL)]
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(work / "data"),
               "PROVISIONER_CONFIG": "", "PROVISIONER_DHCP_MODE": "full",
               "PROVISIONER_DHCP_INTERFACE": self.bed.server_if, "PROVISIONER_DHCP_PORT": "67",
               # perfdhcp fills giaddr with its own address (it acts as a relay agent, and the
               # answers go back to it on port 67), so that address is the relay.
               "PROVISIONER_DHCP_SUBNETS": json.dumps([{
                   "network": POOL.subnet, "pool_start": POOL.first, "pool_end": POOL.last,
                   "relay": self.bed.client_ip}]),
               "PROVISIONER_TFTP_LISTEN": self.bed.server_ip, "PROVISIONER_BOOT_PORT": "18069",
               "PROVISIONER_API_PORT": "18099", "PYTHONPATH": str(self.tree)}
        extra: list[subprocess.Popen[Any]] = []
        if name == "etcd":
            etcd = Etcd(self.bed, work / "etcd")
            etcd.start()
            assert etcd.proc is not None
            extra.append(etcd.proc)
            env.update({"PROVISIONER_STORE_BACKEND": "etcd",
                        "PROVISIONER_STORE_ENDPOINTS": etcd.endpoint})
        log = work / "stdout.log"
        proc = self.bed.spawn_server([sys.executable, "-m", "provisioner", "serve",
                                      "--log-level", "info"], log, env=env, cwd=work)
        dhcpd.wait_for_text(proc, log, "dhcp: full mode on")
        return [proc, *extra]

    def measure(self, name: str, load: perfdhcp.Load, rate: int) -> perfdhcp.Run:
        run = perfdhcp.measure(self.bed, lambda: self.start(name), load, rate)
        print(f"  {run.line()}{'  NOISY' if run.bg_cores > 0.3 else ''}", flush=True)
        return run


def as_json(runs: Sequence[perfdhcp.Run]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(r), "dora_per_s": r.dora_per_s, "drop_pct": r.drop_pct,
             "cpu_ms_per_1k": r.cpu_ms_per_1k} for r in runs]


def bench_server(opts: argparse.Namespace, servers: Servers, name: str, fixed: int,
                 out: dict[str, Any]) -> None:
    """Search, confirm and (when `fixed`) the comparison rate for one server; fills `out` as it
    goes, so an interrupted run still reports what it measured."""
    load = perfdhcp.Load(opts.period, opts.clients)
    print(f"== {name}", flush=True)
    steps, good = perfdhcp.search(lambda rate: servers.measure(name, load, rate),
                                  opts.start_rate, opts.max_rate, opts.bisect)
    out["search_steps"], out["max_rate"] = as_json(steps), good
    if good:
        for attempt in range(3):  # the found rate must hold in the median of --runs runs
            print(f" confirm at {good} x{opts.runs}", flush=True)
            runs = [servers.measure(name, load, good) for _ in range(opts.runs)]
            drops = perfdhcp.median_of(runs, lambda r: r.drop_pct) or 0.0
            if drops < perfdhcp.DROP_MAX_PCT or attempt == 2:
                break
            good = int(good * 0.9)
        out["max_rate"], out["confirm_runs"] = good, as_json(runs)
        out["confirm"] = perfdhcp.summary(runs)
    if fixed and (opts.fixed_all or (good or 0) >= fixed):
        print(f" fixed rate {fixed} x{opts.runs}", flush=True)
        runs = [servers.measure(name, load, fixed) for _ in range(opts.runs)]
        out["fixed"] = {"rate": fixed, "runs": as_json(runs), "summary": perfdhcp.summary(runs)}


# ---------------------------------------------------------------- report
def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _lat(summary: dict[str, Any] | None, leg: str) -> str:
    got = (summary or {}).get("latency_ms", {}).get(leg, {})
    return f"{_f(got.get('p50'))} / {_f(got.get('p99'))}"


def table(results: dict[str, dict[str, Any]], fixed: int) -> str:
    kea_rate = (results.get("kea", {}).get("confirm") or {}).get("dora_per_s")
    head = ("| server | max rate (offered) | DORA/s at max (median) | vs Kea | drops % | "
            "DO p50/p99 ms | RA p50/p99 ms | "
            f"@{fixed}/s DORA/s | @{fixed}/s DO p50/p99 ms | @{fixed}/s RA p50/p99 ms | "
            "srv CPU ms/1k DORA |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        s = r.get("confirm")
        fx = (r.get("fixed") or {}).get("summary")
        rate = (s or {}).get("dora_per_s")
        ratio = f"{rate / kea_rate:.2f}" if rate and kea_rate else "-"
        lines.append(
            f"| {name} | {r.get('max_rate') or '-'} | {_f(rate, 0)} | {ratio} | "
            f"{_f((s or {}).get('drop_pct'))} | {_lat(s, 'DISCOVER-OFFER')} | "
            f"{_lat(s, 'REQUEST-ACK')} | {_f((fx or {}).get('dora_per_s'), 0)} | "
            f"{_lat(fx, 'DISCOVER-OFFER')} | {_lat(fx, 'REQUEST-ACK')} | "
            f"{_f((s or {}).get('cpu_ms_per_1k'), 0)} |")
    return "\n".join(lines)


def run_ab(opts: argparse.Namespace, servers: Servers, doc: dict[str, Any]) -> str:
    """This checkout against --ab TREE at one fixed rate, runs interleaved (A B A B ...) so that
    the machine's drift falls on both alike; returns the printed table."""
    trees = {"this": ROOT, "other": Path(opts.ab).resolve()}
    rate, load = opts.fixed_rate, perfdhcp.Load(opts.period, opts.clients)
    lines = [f"A/B at {rate} DORA/s, {opts.runs} interleaved runs each, medians; this = {ROOT}, "
             f"other = {trees['other']}",
             "| server | tree | DORA/s | drops % | CPU ms / 1k DORA | DO p50/p99 ms | "
             "RA p50/p99 ms |", "|---|---|---|---|---|---|---|"]
    for name in opts.server_list:
        runs: dict[str, list[perfdhcp.Run]] = {label: [] for label in trees}
        for _ in range(opts.runs):
            for label, tree in trees.items():
                servers.tree = tree
                print(f"== {name} from {label} ({tree})", flush=True)
                runs[label].append(servers.measure(name, load, rate))
        servers.tree = ROOT
        for label, tree in trees.items():
            s = perfdhcp.summary(runs[label])
            doc["results"][f"{name}@{label}"] = {"tree": str(tree), "fixed": {
                "rate": rate, "runs": as_json(runs[label]), "summary": s}}
            lines.append(f"| {name} | {label} | {_f(s['dora_per_s'], 0)} | "
                         f"{_f(s['drop_pct'])} | {_f(s['cpu_ms_per_1k'], 0)} | "
                         f"{_lat(s, 'DISCOVER-OFFER')} | {_lat(s, 'REQUEST-ACK')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def wait_for_other_benchmarks(limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", OTHER_BENCH], capture_output=True, text=True,
                               check=False, timeout=10)
        others = [p for p in found.stdout.split() if int(p) != os.getpid()]
        if not others:
            return
        print(f"waiting for other benchmarks (pids {' '.join(others)})", flush=True)
        time.sleep(15)
    print("other benchmarks still running after 10 min; going on (see the bg column)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--servers", default=",".join(ALL),
                    help="comma list of " + ", ".join(ALL) + " (kea first gives the fixed rate)")
    ap.add_argument("--period", type=int, default=10, help="seconds per perfdhcp run")
    ap.add_argument("--runs", type=int, default=3, help="confirmation / fixed-rate repetitions")
    ap.add_argument("--clients", type=int, default=10000, help="distinct clients (perfdhcp -R)")
    ap.add_argument("--start-rate", type=int, default=500)
    ap.add_argument("--max-rate", type=int, default=64000)
    ap.add_argument("--bisect", type=int, default=4)
    ap.add_argument("--fixed-rate", type=int, default=0,
                    help="comparison rate (default: half of Kea's max rate in this run)")
    ap.add_argument("--fixed-all", action="store_true",
                    help="run the comparison rate also for servers whose max rate is below it")
    ap.add_argument("--ab", metavar="TREE", default="",
                    help="A/B instead of the search: provisioner (sqlite and/or etcd in --servers) "
                         "from this checkout and from TREE (another checkout), interleaved, "
                         "--runs times each at --fixed-rate")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for other benchmarks (bench/tftp.py ...) to finish")
    ap.add_argument("--json", type=Path, help="also write every run here")
    opts = ap.parse_args()
    opts.server_list = [s.strip() for s in opts.servers.split(",") if s.strip()]
    bad = [s for s in opts.server_list if s not in ALL]
    if bad:
        ap.error(f"unknown server(s) {bad}; choose from {ALL}")
    if not (1 <= opts.runs <= 20 and 1 <= opts.period <= 120 and 0 <= opts.bisect <= 8):
        ap.error("--runs 1..20, --period 1..120, --bisect 0..8")
    if opts.ab:
        if not opts.fixed_rate:
            ap.error("--ab needs --fixed-rate")
        if not (Path(opts.ab) / "provisioner" / "__main__.py").exists():
            ap.error(f"--ab {opts.ab}: not a provisioner checkout (no provisioner/__main__.py)")
        if not set(opts.server_list) <= set(OURS):
            ap.error(f"--ab compares our own servers only: --servers {','.join(OURS)}")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    for tool in ("perfdhcp", "kea-dhcp4", "dnsmasq", "etcd", "curl"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (apt-get install kea-admin kea-dhcp4-server dnsmasq-base "
                     "etcd-server curl)")
    return opts


def run(opts: argparse.Namespace, servers: Servers, doc: dict[str, Any]) -> None:
    results: dict[str, dict[str, Any]] = doc["results"]
    fixed = opts.fixed_rate
    for name in opts.server_list:
        results[name] = {}
        bench_server(opts, servers, name, fixed if name != "kea" else 0, results[name])
        if name == "kea" and not opts.fixed_rate and results[name].get("max_rate"):
            rate = results[name]["confirm"]["dora_per_s"] or 0
            fixed = int(rate / 2 / 50) * 50
            print(f" comparison rate: {fixed}/s (half of Kea's {rate:.0f})", flush=True)
            doc["fixed_rate"] = fixed
            if fixed:  # Kea's own latency at the comparison rate
                load = perfdhcp.Load(opts.period, opts.clients)
                runs = [servers.measure("kea", load, fixed) for _ in range(opts.runs)]
                results[name]["fixed"] = {"rate": fixed, "runs": as_json(runs),
                                          "summary": perfdhcp.summary(runs)}
        doc["fixed_rate"] = fixed


def main() -> int:
    opts = parse_args()
    if not opts.no_wait:
        wait_for_other_benchmarks()
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                           "nproc": os.cpu_count(), "fixed_rate": opts.fixed_rate,
                           "results": {}}
    t0 = time.time()
    report = ""
    work = Path(tempfile.mkdtemp(prefix="pv-dhcp-bench-"))
    try:
        with Testbed.create(subnet=SUBNET) as bed:
            print(f"where: {bed.describe()}", flush=True)
            servers = Servers(bed, work)
            if opts.ab:
                report = run_ab(opts, servers, doc)
            else:
                run(opts, servers, doc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        doc["wall_s"] = round(time.time() - t0)
        if opts.json:
            opts.json.write_text(json.dumps(doc, indent=1))
        print()
        if not opts.ab:
            print(f"comparison rate: {doc.get('fixed_rate')}/s; {opts.runs} run(s) of "
                  f"{opts.period}s each, medians; wall {doc['wall_s']} s")
            report = table(doc["results"], doc.get("fixed_rate") or 0)
        print(report)
        if opts.json:
            print("json:", opts.json)
    return 0


if __name__ == "__main__":
    with unwinding():
        sys.exit(main())
