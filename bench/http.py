"""HTTP boot-plane benchmark: provisioner's boot server against nginx, the same file, the same run.

    sudo .venv/bin/python bench/http.py [--runs 5] [--clients 64] [--big-mib 1024]
        [--small-mib 100] [--loopback] [--markdown FILE] [--json FILE]
    sudo .venv/bin/python bench/http.py --runs 1 --big-mib 256 --small-mib 32 --clients 16  # quick

What it measures (MB = 10**6 bytes):
- `1 x 1 GiB`: one curl fetching a 1 GiB image;
- `64 x 100 MiB`: 64 curls started together, each fetching a 100 MiB image;
aggregate MB/s = clients x size / (first start .. last finish), wall clock, curl process start
included (the same for both servers). Each figure is the median of --runs runs; the rounds
interleave the servers (provisioner first in odd rounds, nginx first in even ones) so that a
drift in the machine's speed hits both. The ratio printed is provisioner / nginx per case;
the target (issue 4) is at least 0.7.

Servers, both started here and serving the SAME files from one temporary directory:
- provisioner: `provisioner serve` (the real entry point, settings from PROVISIONER_* variables:
  boot plane on SERVER_IP:8080, TFTP off, API on 127.0.0.1 inside the server namespace);
  URL /boot/images/bench/1/FILE, ETag from the generated manifest.json;
- nginx (Debian nginx-light; bench/peers/nginx.py): a generated config in the temporary prefix,
  `daemon off`, `worker_processes 1` (provisioner is one process, one thread), sendfile and
  tcp_nopush on, access log off; URL /bench/1/FILE.

Checks: every transfer must end with HTTP 200, curl exit 0 and exactly the file's size, or the
run fails; sha256 is checked on an untimed full fetch of each file from each server before the
timed runs, and on one of the 64 transfers (saved to a file, hashed after the clock stops) in
every concurrent run.

Where: by default servers in one network namespace and curls in another, joined by a veth
(bench/peers/testbed.py, needs root); --loopback runs everything on 127.0.0.1 instead.

Noise: this machine is shared (2 cores). Before it writes the files, and before each round, the
script waits (at most --wait-others seconds in all) while `pgrep -f 'bench/(tftp|store|dhcp).py'`
finds another benchmark. Each run also records "background" CPU: the machine's busy time
(/proc/stat) minus ours (this process, its waited children, and the two servers); a run with more
than --max-bg cores of it is repeated after a pause, at most twice.

Bounds: every curl has --max-time (--timeout), every wait is bounded, at most --clients
processes at once; servers are stopped by PID and the namespaces and the temporary directory
removed on every exit (also on SIGTERM / Ctrl-C).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.peers import nginx as nginx_peer  # noqa: E402
from bench.peers.cpu import machine_busy_seconds, own_seconds, tree_seconds  # noqa: E402
from bench.peers.payload import make_file, sha256_file  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402

MIB = 1024 * 1024
PORT = 8080
OTHER_BENCHES = r"bench/(tftp|store|dhcp)\.py"

def log(message: str) -> None:
    print(message, flush=True)


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[Any]
    url_prefix: str  # + FILE

    def cpu_seconds(self) -> float:
        """CPU time of the server and its direct children (nginx workers), from /proc."""
        return tree_seconds(self.proc.pid)


def start_provisioner(place: Testbed, work: Path, images: Path) -> Server:
    (work / "provisioner.toml").write_text("# bench/http.py: everything from the environment\n")
    env = dict(os.environ, PROVISIONER_CONFIG=str(work / "provisioner.toml"),
               PROVISIONER_DATA_DIR=str(work / "data"), PROVISIONER_TFTP_ENABLED="false",
               PROVISIONER_BOOT_LISTEN=place.server_ip, PROVISIONER_BOOT_PORT=str(PORT),
               PROVISIONER_BOOT_IMAGES=str(images),
               # every client runs from the one client namespace: lift the per-address cap
               # ([boot] max_per_source) above --clients (at most 256)
               PROVISIONER_BOOT_MAX_PER_SOURCE="256")
    argv = [sys.executable, "-m", "provisioner", "serve", "--listen", "127.0.0.1",
            "--port", str(PORT + 1)]
    proc = place.spawn_server(argv, work / "provisioner.log", env=env)
    return Server("provisioner", proc, f"http://{place.server_ip}:{PORT}/boot/images/bench/1/")


def start_nginx(place: Testbed, binary: str, work: Path, images: Path) -> Server:
    prefix = work / "nginx"
    conf = nginx_peer.write_config(prefix, place.server_ip, PORT + 2, images)
    proc = place.spawn_server(nginx_peer.argv(binary, prefix, conf), prefix / "stdout.log")
    return Server("nginx", proc, f"http://{place.server_ip}:{PORT + 2}/bench/1/")


def wait_ready(place: Testbed, server: Server, file: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited at start (code {server.proc.returncode}); "
                             "see its log in the work directory (--keep)")
        done = subprocess.run(place.client(["curl", "-s", "-o", "/dev/null", "-r", "0-0", "-w",
                                            "%{http_code}", "--max-time", "2", "--noproxy", "*",
                                            server.url_prefix + file]),
                              capture_output=True, text=True, timeout=10, check=False)
        if done.stdout.strip() == "206":
            return
        time.sleep(0.3)
    raise SystemExit(f"{server.name}: no answer within {limit:.0f} s")


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Transfer:
    ok: bool
    detail: str


def fetch(place: Testbed, url: str, size: int, out: str, timeout: int) -> Transfer:
    argv = place.client(["curl", "-s", "-o", out, "-w", "%{http_code} %{size_download}",
                         "--noproxy", "*", "--max-time", str(timeout), url])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 15,
                              check=False)
    except subprocess.TimeoutExpired:
        return Transfer(False, "timed out")
    code, got = ([*done.stdout.split(), "0", "0"])[:2]
    ok = done.returncode == 0 and code == "200" and int(float(got)) == size
    return Transfer(ok, f"curl exit {done.returncode}, HTTP {code}, {got} of {size} bytes")


@dataclass
class Run:
    mbps: float
    wall: float
    server_cpu: float
    bg_cores: float


@dataclass
class Case:
    label: str
    clients: int
    file: str
    size: int
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def median(self, server: str) -> float:
        return statistics.median(r.mbps for r in self.runs[server])


@dataclass
class Bench:
    """One measurement session: where, which servers, which files."""

    args: argparse.Namespace
    place: Testbed
    servers: list[Server]
    cases: list[Case]
    shas: dict[str, str]
    work: Path
    waited: float = 0.0  # seconds spent waiting for other benchmarks

    def one_run(self, server: Server, case: Case) -> Run:
        sample = self.work / "sample.bin"
        with contextlib.suppress(FileNotFoundError):
            sample.unlink()
        outs = ["/dev/null"] * case.clients
        if case.clients > 1:
            outs[0] = str(sample)
        url = server.url_prefix + case.file
        cpu0, busy0, own0 = server.cpu_seconds(), machine_busy_seconds(), own_seconds()
        others0 = sum(s.cpu_seconds() for s in self.servers if s is not server)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=case.clients) as pool:
            futures = [pool.submit(fetch, self.place, url, case.size, out, self.args.timeout)
                       for out in outs]
            results = [f.result() for f in futures]
        wall = time.perf_counter() - started
        cpu1, busy1, own1 = server.cpu_seconds(), machine_busy_seconds(), own_seconds()
        others1 = sum(s.cpu_seconds() for s in self.servers if s is not server)
        failed = [r.detail for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{server.name} {case.label}: {len(failed)} of {case.clients} "
                             f"transfers incomplete, e.g. {failed[0]}")
        if case.clients > 1 and sha256_file(sample) != self.shas[case.file]:
            raise SystemExit(f"{server.name} {case.label}: sha256 of the sampled transfer "
                             "differs")
        ours = (own1 - own0) + (cpu1 - cpu0) + (others1 - others0)
        background = max(0.0, (busy1 - busy0) - ours) / wall
        return Run(case.clients * case.size / 1e6 / wall, wall, cpu1 - cpu0, background)

    def verify(self) -> None:
        """Untimed: fetch each file once from each server to a file and compare its sha256."""
        target = self.work / "verify.bin"
        for server in self.servers:
            for case in self.cases:
                result = fetch(self.place, server.url_prefix + case.file, case.size,
                               str(target), self.args.timeout)
                if not result.ok or sha256_file(target) != self.shas[case.file]:
                    raise SystemExit(f"{server.name} {case.file}: verification failed "
                                     f"({result.detail})")
                target.unlink()
        log(f"verified: every file from each of the {len(self.servers)} servers has the "
            "expected sha256")

    def measure(self, quiet: Quiet) -> None:
        for case in self.cases:
            for server in self.servers:
                case.runs[server.name] = []
        for round_no in range(self.args.runs):
            quiet.wait()
            order = self.servers if round_no % 2 == 0 else self.servers[::-1]
            for case in self.cases:
                for server in order:
                    case.runs[server.name].append(self._steady_run(round_no, server, case))
        if quiet.gave_up:
            log("NOTE: another benchmark ran during some rounds")
        self.waited = quiet.waited

    def _steady_run(self, round_no: int, server: Server, case: Case) -> Run:
        """One run, repeated (at most twice, after a pause) when background CPU was high."""
        for attempt in range(3):
            run = self.one_run(server, case)
            noisy = run.bg_cores > self.args.max_bg
            log(f"  round {round_no + 1} {server.name:>11} {case.label:>13}: "
                f"{run.mbps:8.1f} MB/s  {run.wall:6.2f} s  server cpu "
                f"{run.server_cpu:5.2f} s  background {run.bg_cores:4.2f} cores"
                f"{'  NOISY' if noisy else ''}")
            if not noisy or attempt == 2:
                break
            time.sleep(10)
        return run


def other_benchmarks() -> list[str]:
    done = subprocess.run(["pgrep", "-af", OTHER_BENCHES], capture_output=True, text=True,
                          timeout=10, check=False)
    return [line for line in done.stdout.splitlines() if line.strip()]


class Quiet:
    """Waits while another benchmark runs, within one overall budget."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        self.waited = 0.0
        self.gave_up = False

    def wait(self) -> None:
        started = time.monotonic()
        reported = False
        while (busy := other_benchmarks()) and time.monotonic() < self.deadline:
            if not reported:
                log(f"waiting for another benchmark to finish: {busy[0][:120]}")
                reported = True
            time.sleep(5)
        if busy:
            self.gave_up = True
            log("another benchmark still runs; measuring anyway (figures marked NOISY)")
        self.waited += time.monotonic() - started


# -- report --------------------------------------------------------------------------------------


def table(cases: list[Case], runs: int) -> str:
    lines = ["| case | provisioner MB/s | nginx MB/s | provisioner / nginx | target |",
             "|---|---:|---:|---:|---|"]
    for case in cases:
        prov, ngx = case.runs["provisioner"], case.runs["nginx"]
        ratio = case.median("provisioner") / case.median("nginx")
        lines.append(
            f"| {case.label} | {case.median('provisioner'):,.0f} "
            f"({min(r.mbps for r in prov):,.0f}-{max(r.mbps for r in prov):,.0f}) "
            f"| {case.median('nginx'):,.0f} "
            f"({min(r.mbps for r in ngx):,.0f}-{max(r.mbps for r in ngx):,.0f}) "
            f"| {ratio:.2f}x | >= 0.7x: {'met' if ratio >= 0.7 else 'NOT met'} |")
    lines.append("")
    lines.append(f"Medians of {runs} runs (min-max in brackets), aggregate MB/s "
                 "(10^6 bytes/s), every transfer complete.")
    lines.append("")
    lines.append("| case | provisioner server CPU s/run | nginx server CPU s/run |")
    lines.append("|---|---:|---:|")
    for case in cases:
        cpu = {name: statistics.median(r.server_cpu for r in runs_)
               for name, runs_ in case.runs.items()}
        lines.append(f"| {case.label} | {cpu['provisioner']:.2f} | {cpu['nginx']:.2f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (>= 3)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-mib", type=int, default=100)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per curl")
    parser.add_argument("--loopback", action="store_true", help="no network namespaces")
    parser.add_argument("--wait-others", type=float, default=600,
                        help="seconds at most to wait for other benchmarks, in all")
    parser.add_argument("--max-bg", type=float, default=0.3,
                        help="background CPU (cores) above which a run is repeated")
    parser.add_argument("--work", type=Path, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    if not (1 <= args.runs <= 20 and 1 <= args.clients <= 256):
        parser.error("--runs 1..20 (figures are medians: 3 or more to trust them), "
                     "--clients 1..256")
    return args


def run(args: argparse.Namespace, nginx: str, work: Path) -> None:
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) \
        else sys.executable
    command = shlex.join([python, *sys.argv])
    images = work / "images"
    version = images / "bench" / "1"
    version.mkdir(parents=True)
    cases = [Case(f"1 x {args.big_mib} MiB", 1, "big.img", args.big_mib * MIB),
             Case(f"{args.clients} x {args.small_mib} MiB", args.clients, "small.img",
                  args.small_mib * MIB)]
    quiet = Quiet(args.wait_others)
    quiet.wait()  # before writing the files: that load would disturb the other benchmark too
    log(f"writing {args.big_mib} + {args.small_mib} MiB of random data in {work}")
    shas = {c.file: make_file(version / c.file, c.size) for c in cases}
    (version / "manifest.json").write_text(json.dumps(
        {"files": {c.file: {"sha256": shas[c.file], "size": c.size} for c in cases}}))
    place = Testbed.create(loopback=args.loopback)
    servers: list[Server] = []
    try:
        log(f"place: {place.describe()}")
        servers.append(start_provisioner(place, work, images))
        servers.append(start_nginx(place, nginx, work, images))
        for server in servers:
            wait_ready(place, server, cases[0].file)
        bench = Bench(args, place, servers, cases, shas, work)
        bench.verify()
        bench.measure(quiet)
        report = table(cases, args.runs)
        header = (f"Command: `{command}`\n\n"
                  f"Where: {place.describe()}; {os.cpu_count()} CPUs; nginx "
                  f"{nginx_peer.version(nginx)} (worker_processes 1); "
                  f"{time.strftime('%Y-%m-%d %H:%M')}; waited {bench.waited:.0f} s for other "
                  "benchmarks to finish\n")
        log("\n" + header + "\n" + report)
        if args.markdown:
            args.markdown.write_text(header + "\n" + report + "\n")
        if args.json:
            args.json.write_text(json.dumps({
                "command": command, "where": place.describe(),
                "cases": [{"label": c.label, "clients": c.clients, "bytes": c.size,
                           "runs": {name: [vars(r) for r in runs]
                                    for name, runs in c.runs.items()}}
                          for c in cases]}, indent=1))
    finally:
        for server in servers:
            place.stop(server.proc)
        place.close()


def main() -> None:
    args = parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed (apt-get install curl)")
    nginx = nginx_peer.binary()
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-http-", dir=args.work))
    work.chmod(0o755)
    with unwinding():
        try:
            run(args, nginx, work)
        finally:
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
