"""TFTP benchmark: provisioner's server against in.tftpd (tftpd-hpa), dnsmasq and tftpy's server.

    .venv/bin/python bench/tftp.py [--runs 3] [--big-mib 64] [--conc-mib 16] [--clients 32]
                                   [--servers provisioner,tftpd-hpa,dnsmasq,tftpy]
                                   [--tftpy-python PATH] [--json FILE]

Needs root, iproute2, atftp (the client for every server), tftpd-hpa and dnsmasq-base (Debian
packages), and tftpy in this Python or in --tftpy-python (for tftpy's server; left out with a
note when missing). The peers' command lines are in bench/peers/tftpd.py; atftpd, the Debian
TFTP server with windowsize, conflicts with tftpd-hpa, so in.tftpd is the peer.

Quick mode (a minute or two on 2 cores): `--runs 1 --big-mib 16 --conc-mib 4 --clients 8`.

What it does, in one run:
- one Testbed (bench/peers/testbed.py: two namespaces and a veth); every server runs in the
  server namespace on its own address of the same veth (provisioner .1, in.tftpd .11, dnsmasq
  .12, tftpy .13), port 69, all serving the same root on tmpfs; atftp clients run in the client
  namespace. Nothing leaves the two namespaces. The servers run side by side and the runs are
  interleaved (A B C D, A B C D, ...) so that load from other users of a shared machine falls
  on all of them alike.
- cases: a --big-mib file (64 MiB) to one client at blksize 1468 with windowsize 1 (the option
  not sent) and with windowsize 16 (RFC 7440; servers without it ignore the option and run
  lock-step); a --conc-mib file (16 MiB) to --clients (32) concurrent clients at blksize 1468.
- every transfer is written to tmpfs and its sha256 checked after the clock stops; a figure
  counts only transfers that completed with the right bytes.
- per run: MB/s (10^6 bytes/s; aggregate for the concurrent case: bytes of the good transfers
  over the time from the first start to the last finish), server CPU seconds (with reaped
  children: in.tftpd forks per transfer), and the background CPU of other processes on the
  machine (runs above 0.3 cores of it are repeated, at most twice, the quietest kept).
- provisioner's peak RSS: VmHWM of the server process, and VmRSS sampled every 0.1 s.
- before timing, one `atftp --trace` fetch per server and option set records the OACK.
Prints the medians (min-max) of --runs runs per server and case, and the targets of issue 4.

Bounds: every atftp is killed after --timeout s (120); every loop runs a fixed count; the
namespaces, the servers (by PID) and the tmpfs directory are removed at the end, also on
failure or Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.peers import tftpd  # noqa: E402
from bench.peers.cpu import machine_busy_seconds, own_seconds, process_seconds  # noqa: E402
from bench.peers.payload import make_file, sha256_file  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402

BLKSIZE = 1468
MAX_BG_CORES = 0.3
NOISE_RETRIES = 2
READY_LIMIT = 20.0
API_PORT = 18169
PROBE = "probe.bin"

@dataclass
class Server:
    name: str
    ip: str
    argv: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[Any] | None = None
    log: Path | None = None
    oack: dict[int, str] = field(default_factory=dict)

    def cpu_s(self) -> float:
        """CPU seconds of the server and its reaped children."""
        assert self.proc is not None
        return process_seconds(self.proc.pid)

    def status(self, key: str) -> int:
        """A /proc/PID/status figure in kB (VmHWM, VmRSS), 0 if gone."""
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


@dataclass
class Case:
    label: str
    filename: str
    size: int
    clients: int
    windowsize: int


class Bench:
    def __init__(self, args: argparse.Namespace, bed: Testbed, work: Path) -> None:
        self.args = args
        self.bed = bed
        self.work = work
        self.root = work / "root"
        self.out = work / "out"
        self.digests: dict[str, str] = {}
        self.rss_samples: list[int] = []
        self.client_cpus = ""  # taskset list for the clients, "" for no pinning

    def pin(self, servers: list[Server], server_cpus: str, client_cpus: str) -> None:
        """Pin every server (all its threads; forked children inherit it) and the clients."""
        for server in servers:
            assert server.proc is not None
            subprocess.run(["taskset", "-a", "-p", "-c", server_cpus, str(server.proc.pid)],
                           capture_output=True, timeout=30, check=True)
        self.client_cpus = client_cpus

    # -- set-up ----------------------------------------------------------------------------

    def atftp(self, server: Server, remote: str, local: str, windowsize: int,
              trace: bool = False) -> list[str]:
        argv = ["taskset", "-c", self.client_cpus] if self.client_cpus else []
        argv += ["atftp"] + (["--trace"] if trace else [])
        argv += ["--option", f"blksize {BLKSIZE}"]
        if windowsize > 1:
            argv += ["--option", f"windowsize {windowsize}"]
        return self.bed.client([*argv, "--get", "-r", remote, "-l", local, server.ip, "69"])

    def servers(self, names: list[str], tftpy_python: str | None) -> list[Server]:
        offsets = {"provisioner": 0, "tftpd-hpa": 10, "dnsmasq": 11, "tftpy": 12}
        ips = {name: self.bed.add_server_address(offsets[name]) if offsets[name]
               else self.bed.server_ip for name in names}
        root = str(self.root)
        found: list[Server] = []
        for name in names:
            ip = ips[name]
            if name == "provisioner":
                env = {**os.environ, "PROVISIONER_CONFIG": "",
                       "PROVISIONER_DATA_DIR": str(self.work / "data"),
                       "PROVISIONER_TFTP_LISTEN": ip, "PROVISIONER_TFTP_ROOT": root,
                       # the default (16 per client address) would refuse 32 clients on one IP
                       "PROVISIONER_TFTP_MAX_PER_CLIENT": str(max(64, self.args.clients)),
                       "PROVISIONER_API_LISTEN": "127.0.0.1",
                       "PROVISIONER_API_PORT": str(API_PORT)}
                found.append(Server(name, ip, [sys.executable, "-m", "provisioner", "serve"],
                                    env))
            elif name in tftpd.KINDS:
                found.append(Server(name, ip, tftpd.argv(name, ip, self.root, self.work)))
            elif name == "tftpy":
                if tftpy_python is None:
                    print("tftpy: not installed here and no --tftpy-python; left out")
                    continue
                found.append(Server(name, ip, tftpd.tftpy_argv(tftpy_python, ip, self.root)))
        return found

    def start(self, server: Server) -> None:
        server.log = self.work / f"{server.name}.log"
        server.proc = self.bed.spawn_server(server.argv, server.log, env=server.env)

    def wait_ready(self, server: Server) -> None:
        deadline = time.monotonic() + READY_LIMIT
        local = str(self.out / f"probe-{server.name}")
        while time.monotonic() < deadline:
            assert server.proc is not None
            if server.proc.poll() is not None:
                break
            result = subprocess.run(self.atftp(server, PROBE, local, 1), capture_output=True,
                                    timeout=30, check=False)
            if result.returncode == 0 and sha256_file(Path(local)) == self.digests[PROBE]:
                return
            time.sleep(0.3)
        log = server.log.read_text(errors="replace")[-3000:] if server.log else ""
        raise SystemExit(f"{server.name} did not answer on {server.ip}:69 within "
                         f"{READY_LIMIT:.0f} s\n{log}")

    def negotiate(self, server: Server, windowsize: int) -> str:
        result = subprocess.run(self.atftp(server, PROBE, str(self.out / "oack"), windowsize,
                                           trace=True),
                                capture_output=True, text=True, timeout=30, check=False)
        match = re.search(r"received OACK <([^>]*)>", result.stdout + result.stderr)
        return match.group(1).strip(" ,\x08") if match else "no OACK"

    # -- measuring -------------------------------------------------------------------------

    def run_once(self, server: Server, case: Case) -> dict[str, Any]:
        locals_ = [self.out / f"{server.name}-{i}" for i in range(case.clients)]
        ends: list[float] = [0.0] * case.clients
        codes: list[int | str] = [-1] * case.clients
        argvs = [self.atftp(server, case.filename, str(p), case.windowsize) for p in locals_]

        def client(i: int) -> None:
            proc = subprocess.Popen(argvs[i], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                codes[i] = proc.wait(self.args.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by PID
                proc.wait(10)
                codes[i] = "timeout"
            ends[i] = time.monotonic()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(case.clients)]
        cpu0, busy0, ours0 = server.cpu_s(), machine_busy_seconds(), own_seconds()
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.args.timeout + 30)
        wall = max(ends) - t0
        cpu1, busy1, ours1 = server.cpu_s(), machine_busy_seconds(), own_seconds()
        good = 0
        for code, path in zip(codes, locals_, strict=True):
            if code == 0 and path.exists() and sha256_file(path) == self.digests[case.filename]:
                good += 1
            path.unlink(missing_ok=True)
        server_cpu = cpu1 - cpu0
        background = max(0.0, (busy1 - busy0) - server_cpu - (ours1 - ours0))
        return {"MBps": round(good * case.size / 1e6 / wall, 2), "wall_s": round(wall, 3),
                "ok": good, "failed": case.clients - good,
                "server_cpu_s": round(server_cpu, 2),
                "bg_cores": round(background / wall, 2)}

    def measure(self, server: Server, case: Case) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        for attempt in range(NOISE_RETRIES + 1):
            result = self.run_once(server, case)
            result["attempts"] = attempt + 1
            if best is None or result["bg_cores"] < best["bg_cores"]:
                best = result
            if result["bg_cores"] <= MAX_BG_CORES:
                break
            time.sleep(3)
        assert best is not None
        return best

    def sample_rss(self, server: Server, stop: threading.Event) -> None:
        for _ in range(36000):  # 0.1 s steps, at most an hour
            self.rss_samples.append(server.status("VmRSS"))
            if stop.wait(0.1):
                return


def fmt(runs: list[dict[str, Any]]) -> str:
    values = [r["MBps"] for r in runs]
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"


def median(runs: list[dict[str, Any]], key: str = "MBps") -> float:
    return float(statistics.median(r[key] for r in runs))


def report(results: dict[str, dict[str, list[dict[str, Any]]]], servers: list[Server],
           cases: list[Case], *, hwm_kb: int, rss_max_kb: int, args: argparse.Namespace) -> None:
    names = [s.name for s in servers]
    print(f"\nMB/s, median of {args.runs} runs (min-max); blksize {BLKSIZE}; "
          f"{os.cpu_count()} CPUs; load at end {os.getloadavg()[0]:.2f}")
    print(f"{'case':32}" + "".join(f"{n:>20}" for n in names))
    for case in cases:
        row = results[case.label]
        print(f"{case.label:32}" + "".join(f"{fmt(row[n]):>20}" for n in names))
        failed = {n: sum(r["failed"] for r in row[n]) for n in names}
        cpu = {n: median(row[n], "server_cpu_s") for n in names}
        noisy = {n: sum(1 for r in row[n] if r["bg_cores"] > MAX_BG_CORES) for n in names}
        print(f"{'  failed transfers':32}" + "".join(f"{failed[n]:>20}" for n in names))
        print(f"{'  server CPU s (median)':32}" + "".join(f"{cpu[n]:>20.2f}" for n in names))
        print(f"{'  noisy runs (>0.3 bg cores)':32}" + "".join(f"{noisy[n]:>20}" for n in names))
    print("OACK to `--option blksize 1468 --option windowsize 16`:")
    for server in servers:
        print(f"  {server.name:12} {server.oack.get(16, '?')}")
    print(f"provisioner RSS: VmHWM {hwm_kb / 1024:.1f} MiB, max sampled VmRSS "
          f"{rss_max_kb / 1024:.1f} MiB")

    if "provisioner" not in names:
        return
    single, window, conc = (results[c.label] for c in cases)
    ours = {label: median(rows["provisioner"]) for label, rows in
            (("ws1", single), ("ws16", window), ("conc", conc))}
    print("\ntargets (issue 4):")
    for peer in ("tftpd-hpa", "dnsmasq"):
        if peer in names:
            ratio = ours["ws1"] / median(single[peer])
            print(f"  1 client ws1: provisioner / {peer} = {ratio:.2f}  "
                  f"{'PASS' if ratio >= 1 else 'MISS'} (>= 1)")
            ratio = ours["conc"] / median(conc[peer])
            print(f"  {args.clients} clients: provisioner / {peer} = {ratio:.2f}  "
                  f"{'PASS' if ratio >= 1 else 'MISS'} (>= 1)")
    ratio = ours["ws16"] / ours["ws1"]
    print(f"  provisioner ws16 / ws1 = {ratio:.2f}  {'PASS' if ratio >= 2 else 'MISS'} (>= 2)")
    all_ok = all(r["failed"] == 0 for c in cases for r in results[c.label]["provisioner"])
    print(f"  every provisioner transfer complete with the right sha256: "
          f"{'PASS' if all_ok else 'MISS'}")
    print(f"  provisioner RSS peak {hwm_kb / 1024:.1f} MiB  "
          f"{'PASS' if hwm_kb < 150 * 1000 else 'MISS'} (< 150 MB)")
    if "tftpy" in names:
        for label, rows in (("1 client ws1", single), (f"{args.clients} clients", conc)):
            ratio = median(rows["tftpy"]) / max(median(rows[p]) for p in names
                                               if p in ("tftpd-hpa", "dnsmasq"))
            print(f"  tftpy, {label}: {ratio:.2f} of the best of in.tftpd/dnsmasq  "
                  f"{'meets' if ratio >= 1 else 'misses'} the target")


@dataclass
class Cleanup:
    bed: Testbed | None = None
    work: Path | None = None

    def __call__(self) -> None:
        if self.bed is not None:
            self.bed.close()
            self.bed = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def run(args: argparse.Namespace, cleanup: Cleanup) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pv-tftp-bench-", dir="/dev/shm"))
    cleanup.work = work
    bed = Testbed.create()
    cleanup.bed = bed
    bench = Bench(args, bed, work)
    for directory in (bench.root, bench.out, work / "data"):
        directory.mkdir()
    big, conc = f"boot{args.big_mib}M.img", f"boot{args.conc_mib}M.img"
    for name, size in ((big, args.big_mib << 20), (conc, args.conc_mib << 20), (PROBE, 1 << 20)):
        bench.digests[name] = make_file(bench.root / name, size)
    cases = [Case(f"{args.big_mib} MiB x1 ws1", big, args.big_mib << 20, 1, 1),
             Case(f"{args.big_mib} MiB x1 ws16", big, args.big_mib << 20, 1, 16),
             Case(f"{args.conc_mib} MiB x{args.clients} ws1", conc, args.conc_mib << 20,
                  args.clients, 1)]

    servers = bench.servers(args.servers.split(","), tftpd.tftpy_python(args.tftpy_python))
    for server in servers:
        bench.start(server)
    for server in servers:
        bench.wait_ready(server)
        server.oack = {ws: bench.negotiate(server, ws) for ws in (1, 16)}
        print(f"{server.name:12} on {server.ip}:69, OACK ws16: {server.oack[16]}", flush=True)

    ours = next((s for s in servers if s.name == "provisioner"), None)
    stop = threading.Event()
    sampler = None
    if ours is not None:
        sampler = threading.Thread(target=bench.sample_rss, args=(ours, stop), daemon=True)
        sampler.start()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c.label: {s.name: [] for s in servers}
                                                          for c in cases}
    everywhere = f"0-{(os.cpu_count() or 1) - 1}"
    try:
        for case in cases:
            if case.clients == 1 and args.single_pin != "none":
                server_cpus, client_cpus = args.single_pin.split(":")
                bench.pin(servers, server_cpus, client_cpus)
            else:
                bench.pin(servers, everywhere, "")
            for attempt in range(args.runs):
                for server in servers:
                    result = bench.measure(server, case)
                    results[case.label][server.name].append(result)
                    print(f"  {case.label:22} run {attempt + 1} {server.name:12} "
                          f"{result['MBps']:8.1f} MB/s  {result['wall_s']:6.2f} s  "
                          f"ok {result['ok']}/{case.clients}  srv cpu {result['server_cpu_s']} s"
                          f"  bg {result['bg_cores']} cores", flush=True)
    finally:
        stop.set()
        if sampler is not None:
            sampler.join(5)
    hwm = ours.status("VmHWM") if ours is not None else 0
    report(results, servers, cases, hwm_kb=hwm, rss_max_kb=max(bench.rss_samples, default=0),
           args=args)
    return {"args": vars(args), "results": results,
            "oack": {s.name: s.oack for s in servers},
            "provisioner_vmhwm_kb": hwm, "provisioner_rss_max_kb": max(bench.rss_samples,
                                                                      default=0),
            "nproc": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--conc-mib", type=int, default=16)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--servers", default="provisioner,tftpd-hpa,dnsmasq,tftpy")
    ap.add_argument("--tftpy-python", default=None,
                    help="a Python with tftpy (default: this one, or "
                         "$PROVISIONER_TEST_TFTPY_PYTHON)")
    ap.add_argument("--timeout", type=int, default=120, help="per-transfer kill timer, s")
    ap.add_argument("--single-pin", default="0:1", metavar="SRV:CLI",
                    help="taskset CPU lists for the server and the client in the one-client "
                         "cases ('none': no pinning); the concurrent case is never pinned")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.single_pin != "none" and args.single_pin.count(":") != 1:
        ap.error("--single-pin is SRV_CPUS:CLIENT_CPUS, e.g. 0:1, or none")
    if not 1 <= args.runs <= 20 or not 1 <= args.clients <= 256:
        ap.error("--runs must be 1..20 and --clients 1..256")
    unknown = set(args.servers.split(",")) - {"provisioner", "tftpd-hpa", "dnsmasq", "tftpy"}
    if unknown:
        ap.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("bench/tftp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "atftp", "in.tftpd", "dnsmasq", "taskset")
               if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install iproute2 atftp tftpd-hpa "
              "dnsmasq-base)", file=sys.stderr)
        return 2

    cleanup = Cleanup()
    with unwinding():
        try:
            out = run(args, cleanup)
        finally:
            cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print("json:", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
