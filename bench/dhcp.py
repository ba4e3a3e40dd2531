"""DHCP benchmark: provisioner's DHCP server against Kea and dnsmasq, driven by Kea's perfdhcp.

    sudo .venv/bin/python bench/dhcp.py [--servers kea,dnsmasq,dnsmasq-noping,sqlite,etcd]
                                        [--period 10] [--runs 3] [--json FILE]
    sudo .venv/bin/python bench/dhcp.py --servers sqlite --fixed-rate 3500 --ab ../other-checkout

The second form measures a change: provisioner from this checkout and from another one (say a
`git worktree` of the commit before), interleaved at one fixed rate, --runs times each.

Needs root, iproute2, perfdhcp + kea-dhcp4 (Debian kea-admin, kea-dhcp4-server), dnsmasq
(dnsmasq-base) and etcd (etcd-server), and the peers harness in ../shared/bench/peers
(netns.sh, dhcp_bench.py, pbcommon.py; --peers or PROVISIONER_PEERS to point elsewhere).

What it does, in one run:
- `netns.sh up` makes one server namespace and one client namespace joined by a veth (names
  pvdhcp-srv / pvdhcp-cli here, so a concurrent run of the peers' run_all.sh cannot tear them
  down under us); every server runs in the server namespace, perfdhcp in the client namespace
  (broadcast DORA with distinct simulated clients, -R --clients). Nothing leaves the namespaces.
- for each server, with the harness's own code (dhcp_bench.search/measure): the highest offered
  rate that passes (< 1 % of exchanges lost, the generator really sent 95 % of the rate), by
  doubling from --start-rate and bisecting, then --runs confirmation runs at that rate (median),
  then --runs runs at the comparison rate = half of Kea's max rate, which gives p50/p99 of
  DISCOVER->OFFER and REQUEST->ACK at a like-for-like load (left out for a server whose max rate
  is below it, where it would only measure overload).
- every measurement starts a fresh server with an empty lease database and stops it by PID:
  kea        kea-dhcp4, memfile (persist=true, lease file on disk), one thread
  dnsmasq    dnsmasq as shipped (ICMP ping check before each offer), dnsmasq-noping without it
  sqlite     `python -m provisioner serve` with the embedded sqlite store (WAL, synchronous=FULL:
             every lease is fsynced before its ACK; concurrent binds share one commit)
  etcd       the same with the etcd store; etcd (one member, fresh data dir) runs inside the server
             namespace on its loopback, so its traffic stays in the namespace too
- the harness repeats a run disturbed by more than 0.3 cores of background CPU (pbcommon.py).
Prints a table (rates, latency percentiles, server CPU per 1000 DORA, ratios to Kea) and writes
everything (all harness runs) as JSON to --json (default /tmp/pfb/results/provisioner-dhcp.json).

Bounds: each perfdhcp run lasts --period s and is killed after period + 31 s (harness); the search
stops at --max-rate with a fixed number of bisections; a server must answer within 30 s of start;
the script waits at most 10 min for other benchmarks (bench/tftp.py, http.py, store.py) to finish
before it starts. At the end, also on failure or SIGTERM/Ctrl-C, every process it started is
stopped by PID and `netns.sh down` removes the namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the source tree `python -m provisioner` runs from (--ab switches it run by run)
SOURCE: dict[str, Path] = {"tree": ROOT}
PEERS = Path(os.environ.get("PROVISIONER_PEERS", ROOT.parent / "shared" / "bench" / "peers"))
NS_ENV = {"PB_NS_SRV": "pvdhcp-srv", "PB_NS_CLI": "pvdhcp-cli", "PB_VETH_SRV": "pvds0",
          "PB_VETH_CLI": "pvdc0"}
OTHER_BENCH = r"bench/(tftp|http|store)\.py"
START_TIMEOUT = 30.0
ETCD_CLIENT, ETCD_PEER = 23790, 23800
ALL = ("kea", "dnsmasq", "dnsmasq-noping", "sqlite", "etcd")
KIND = {"sqlite": "provisioner-sqlite", "etcd": "provisioner-etcd"}

hb: Any = None  # the harness module (dhcp_bench), imported in main() once the env is set


# ---------------------------------------------------------------- our servers in the harness
class _Procs:
    """Every process this script started, so cleanup can stop each one by PID."""

    live: typing.ClassVar[dict[int, subprocess.Popen[bytes]]] = {}

    @classmethod
    def add(cls, proc: subprocess.Popen[bytes]) -> None:
        cls.live[proc.pid] = proc

    @classmethod
    def stop(cls, proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        cls.live.pop(proc.pid, None)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.live.values()):
            cls.stop(proc, 5.0)


ETCD_CPU: list[float] = []  # etcd's CPU seconds for the last provisioner-etcd measurement


def make_server_class(harness_server: Any) -> Any:
    class Server(harness_server):  # type: ignore[misc]
        """dhcp_bench.Server plus provisioner-sqlite / provisioner-etcd."""

        proc: subprocess.Popen[bytes] | None

        def start(self) -> None:
            if not self.kind.startswith("provisioner"):
                super().start()
                if self.proc is not None:
                    _Procs.add(self.proc)
                return
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            self.etcd: subprocess.Popen[bytes] | None = None
            env = {**os.environ, "PROVISIONER_DATA_DIR": os.path.join(self.dir, "data"),
                   "PROVISIONER_CONFIG": "", "PROVISIONER_DHCP_MODE": "full",
                   "PROVISIONER_DHCP_INTERFACE": hb.VETH_SRV,
                   "PROVISIONER_DHCP_PORT": str(self.port),
                   # perfdhcp fills giaddr with its own address (it acts as a relay agent, and
                   # the answers go back to it on port 67), so that address is the relay.
                   "PROVISIONER_DHCP_SUBNETS": json.dumps([{
                       "network": hb.SUBNET, "pool_start": hb.POOL_LO, "pool_end": hb.POOL_HI,
                       "relay": hb.CLI_IP}]),
                   "PROVISIONER_TFTP_LISTEN": hb.SRV_IP, "PROVISIONER_BOOT_PORT": "18069",
                   "PROVISIONER_API_PORT": "18099", "PYTHONPATH": str(SOURCE["tree"])}
            if self.kind == "provisioner-etcd":
                self.etcd = start_etcd(self.dir)
                env.update({"PROVISIONER_STORE_BACKEND": "etcd",
                            "PROVISIONER_STORE_ENDPOINTS": f"127.0.0.1:{ETCD_CLIENT}"})
            self.out = open(os.path.join(self.dir, "stdout.log"), "w")  # noqa: SIM115 (closed in stop)
            argv = [sys.executable, "-m", "provisioner", "serve", "--log-level", "info"]
            self.proc = subprocess.Popen(hb.ns_cmd(hb.NS_SRV, hb.SRV_CPUS, argv), stdout=self.out,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.dir)
            _Procs.add(self.proc)
            wait_for_log(self.proc, os.path.join(self.dir, "stdout.log"), "dhcp: full mode on")

        def stop(self) -> None:
            proc, etcd = self.proc, getattr(self, "etcd", None)
            if etcd is not None:
                ETCD_CPU.append(hb.proc_cpu_s(etcd.pid))
            if self.kind.startswith("provisioner"):
                _Procs.stop(proc)
                _Procs.stop(etcd)
                self.etcd = None
                if proc is not None:
                    self.out.close()
                self.proc = None
                return
            super().stop()
            if proc is not None:
                _Procs.live.pop(proc.pid, None)

    return Server


def wait_for_log(proc: subprocess.Popen[bytes], path: str, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited at start (status {proc.returncode}), see {path}")
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        time.sleep(0.1)
    raise SystemExit(f"server did not log {text!r} within {START_TIMEOUT:g}s, see {path}")


def start_etcd(work: str) -> subprocess.Popen[bytes]:
    """One etcd member on the server namespace's loopback, flags as tests/support/etcd_server.py."""
    client, peer = f"http://127.0.0.1:{ETCD_CLIENT}", f"http://127.0.0.1:{ETCD_PEER}"
    argv = ["etcd", "--name=bench", f"--data-dir={work}/etcd", f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}", f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=bench={peer}",
            "--initial-cluster-state=new", "--initial-cluster-token=bench",
            "--heartbeat-interval=50", "--election-timeout=500", "--enable-pprof=false"]
    with open(os.path.join(work, "etcd.log"), "wb") as log:
        proc = subprocess.Popen(hb.ns_cmd(hb.NS_SRV, hb.SRV_CPUS, argv), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _Procs.add(proc)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"etcd exited at start, see {work}/etcd.log")
        probe = subprocess.run(["ip", "netns", "exec", hb.NS_SRV, "curl", "-sf", "-m", "1",
                                f"{client}/health"], capture_output=True, text=True, timeout=5,
                               check=False)
        if '"health":"true"' in probe.stdout:
            return proc
        time.sleep(0.2)
    raise SystemExit(f"etcd not healthy within {START_TIMEOUT:g}s, see {work}/etcd.log")


# ---------------------------------------------------------------- one server, the harness's way
def harness_args(opts: argparse.Namespace, kind: str, fixed: int) -> argparse.Namespace:
    return argparse.Namespace(
        server=kind, mode="direct", target=hb.SRV_IP, port=67, period=opts.period,
        clients=opts.clients, runs=opts.runs, drop_max=1.0, drop_time=1.0, search=True,
        start_rate=opts.start_rate, max_rate=opts.max_rate, bisect=opts.bisect, rates="",
        fixed_rate=fixed, label=kind, json="")


def bench_server(opts: argparse.Namespace, kind: str, fixed: int, out: dict[str, Any]) -> None:
    """dhcp_bench.main() for one server, minus its argument parsing and file writing; fills
    `out` as it goes, so an interrupted run still reports what it measured."""
    args = harness_args(opts, kind, fixed)
    out.update({"server": kind, "period_s": args.period, "clients": args.clients})
    print(f"== {kind}", flush=True)
    del ETCD_CPU[:]
    steps, good = hb.search(args)
    out["search_steps"], out["max_rate"] = steps, good
    if good:
        out["confirm_attempts"] = []
        for attempt in range(3):
            print(f" confirm at {good} x{args.runs}", flush=True)
            runs = [hb.measure(args, good) for _ in range(args.runs)]
            out["confirm_attempts"].append({"rate": good, "summary": hb.summarize_runs(runs)})
            if statistics.median(r["drop_pct"] for r in runs) < args.drop_max or attempt == 2:
                break
            good = int(good * 0.9)
        out["max_rate"], out["confirm_runs"] = good, runs
        out["confirm_summary"] = hb.summarize_runs(runs)
    out["fixed"] = {}
    if fixed and (opts.fixed_all or (good or 0) >= fixed):
        print(f" fixed rate {fixed} x{args.runs}", flush=True)
        runs = [hb.measure(args, fixed) for _ in range(args.runs)]
        out["fixed"][str(fixed)] = {"runs": runs, "summary": hb.summarize_runs(runs)}
    if ETCD_CPU:
        out["etcd_cpu_s_per_run"] = list(ETCD_CPU)


# ---------------------------------------------------------------- report
def _m(summary: dict[str, Any] | None, *path: str) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node.get("median") if isinstance(node, dict) else node


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(results: dict[str, dict[str, Any]], fixed: int) -> str:
    kea = results.get("kea", {})
    kea_rate = _m(kea.get("confirm_summary"), "dora_per_s")
    head = ("| server | max rate (offered) | DORA/s at max (median) | vs Kea | drops % | "
            "DO p50/p99 ms | RA p50/p99 ms | "
            f"@{fixed}/s DORA/s | @{fixed}/s DO p50/p99 ms | @{fixed}/s RA p50/p99 ms | "
            "srv CPU ms/1k DORA |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        s = r.get("confirm_summary")
        fx = r.get("fixed", {}).get(str(fixed), {}).get("summary")
        rate = _m(s, "dora_per_s")
        ratio = f"{rate / kea_rate:.2f}" if rate and kea_rate else "-"

        def lat(summary: dict[str, Any] | None, leg: str) -> str:
            return (f"{_f(_m(summary, 'latency_ms', leg, 'p50'))} / "
                    f"{_f(_m(summary, 'latency_ms', leg, 'p99'))}")

        lines.append(
            f"| {name} | {r.get('max_rate') or '-'} | {_f(rate, 0)} | {ratio} | "
            f"{_f(_m(s, 'drop_pct'))} | {lat(s, 'DISCOVER-OFFER')} | {lat(s, 'REQUEST-ACK')} | "
            f"{_f(_m(fx, 'dora_per_s'), 0)} | {lat(fx, 'DISCOVER-OFFER')} | "
            f"{lat(fx, 'REQUEST-ACK')} | {_f(_m(s, 'server_cpu_ms_per_1k_dora'), 0)} |")
    return "\n".join(lines)


def run_ab(opts: argparse.Namespace, doc: dict[str, Any]) -> str:
    """This checkout against --ab TREE at one fixed rate, runs interleaved (A B A B ...) so that
    the machine's drift falls on both alike; returns the printed table."""
    trees = {"this": ROOT, "other": Path(opts.ab).resolve()}
    rate = opts.fixed_rate
    lines = [f"A/B at {rate} DORA/s, {opts.runs} interleaved runs each, medians; this = {ROOT}, "
             f"other = {trees['other']}",
             "| server | tree | DORA/s | drops % | CPU ms / 1k DORA | DO p50/p99 ms | "
             "RA p50/p99 ms |", "|---|---|---|---|---|---|---|"]
    for name in opts.server_list:
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for _ in range(opts.runs):
            for label, tree in trees.items():
                SOURCE["tree"] = tree
                print(f"== {name} from {label} ({tree})", flush=True)
                runs[label].append(hb.measure(harness_args(opts, KIND[name], rate), rate))
        SOURCE["tree"] = ROOT
        for label, tree in trees.items():
            summary = hb.summarize_runs(runs[label])
            doc["results"][f"{name}@{label}"] = {"tree": str(tree), "fixed": {
                str(rate): {"runs": runs[label], "summary": summary}}}

            def lat(leg: str, summary: dict[str, Any] = summary) -> str:
                return (f"{_f(_m(summary, 'latency_ms', leg, 'p50'))} / "
                        f"{_f(_m(summary, 'latency_ms', leg, 'p99'))}")

            lines.append(f"| {name} | {label} | {_f(_m(summary, 'dora_per_s'), 0)} | "
                         f"{_f(_m(summary, 'drop_pct'))} | "
                         f"{_f(_m(summary, 'server_cpu_ms_per_1k_dora'), 0)} | "
                         f"{lat('DISCOVER-OFFER')} | {lat('REQUEST-ACK')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def wait_for_other_benchmarks(limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", OTHER_BENCH], capture_output=True, text=True,
                               check=False)
        others = [p for p in found.stdout.split() if int(p) != os.getpid()]
        if not others:
            return
        print(f"waiting for other benchmarks (pids {' '.join(others)})", flush=True)
        time.sleep(15)
    print("other benchmarks still running after 10 min; going on (runs may be flagged noisy)")


def netns(action: str) -> None:
    subprocess.run(["bash", str(PEERS / "netns.sh"), action], check=action == "up",
                   capture_output=action != "up", timeout=60)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    ap.add_argument("--json", default="")
    opts = ap.parse_args()
    opts.server_list = [s.strip() for s in opts.servers.split(",") if s.strip()]
    bad = [s for s in opts.server_list if s not in ALL]
    if bad:
        ap.error(f"unknown server(s) {bad}; choose from {ALL}")
    if opts.ab:
        if not opts.fixed_rate:
            ap.error("--ab needs --fixed-rate")
        if not (Path(opts.ab) / "provisioner" / "__main__.py").exists():
            ap.error(f"--ab {opts.ab}: not a provisioner checkout (no provisioner/__main__.py)")
        if not set(opts.server_list) <= set(KIND):
            ap.error(f"--ab compares our own servers only: --servers {','.join(KIND)}")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    for tool in ("perfdhcp", "kea-dhcp4", "dnsmasq", "etcd", "curl"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (apt-get install kea-admin kea-dhcp4-server dnsmasq-base "
                     "etcd-server curl)")
    return opts


def load_harness() -> Any:
    """Import ../shared/bench/peers/dhcp_bench.py (it reads the PB_* env at import) and teach
    its Server class our two servers."""
    for key, value in NS_ENV.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(PEERS))
    import dhcp_bench  # type: ignore[import-not-found]

    dhcp_bench.Server = make_server_class(dhcp_bench.Server)
    dhcp_bench.join_cgroup()
    return dhcp_bench


def run(opts: argparse.Namespace, doc: dict[str, Any], path: str) -> int:
    results: dict[str, dict[str, Any]] = doc["results"]
    fixed = opts.fixed_rate
    for name in opts.server_list:
        results[name] = {}
        bench_server(opts, KIND.get(name, name), fixed if name != "kea" else 0, results[name])
        if name == "kea" and not opts.fixed_rate and results[name].get("max_rate"):
            rate = _m(results[name].get("confirm_summary"), "dora_per_s") or 0
            fixed = int(rate / 2 / 50) * 50
            print(f" comparison rate: {fixed}/s (half of Kea's {rate:.0f})", flush=True)
            if fixed:  # Kea's own latency at the comparison rate
                args = harness_args(opts, "kea", fixed)
                runs = [hb.measure(args, fixed) for _ in range(opts.runs)]
                results[name]["fixed"] = {str(fixed): {"runs": runs,
                                                       "summary": hb.summarize_runs(runs)}}
        doc["fixed_rate"] = fixed
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
    return int(fixed)


def main() -> int:
    opts = parse_args()
    harness = load_harness()
    globals()["hb"] = harness

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    if not opts.no_wait:
        wait_for_other_benchmarks()
    os.makedirs(os.path.join(hb.WORK, "results"), exist_ok=True)
    path = opts.json or os.path.join(hb.WORK, "results", "provisioner-dhcp.json")
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
                           "nproc": os.cpu_count(), "namespaces": [hb.NS_SRV, hb.NS_CLI],
                           "fixed_rate": opts.fixed_rate, "results": {}}
    t0 = time.time()
    report = ""
    try:
        netns("up")
        if opts.ab:
            report = run_ab(opts, doc)
        else:
            run(opts, doc, path)
    finally:
        _Procs.stop_all()
        netns("down")
        doc["wall_s"] = round(time.time() - t0)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print()
        if not opts.ab:
            print(f"comparison rate: {doc.get('fixed_rate')}/s; {opts.runs} runs of "
                  f"{opts.period}s each, medians")
            report = table(doc["results"], doc.get("fixed_rate") or 0)
        print(report)
        print("json:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
