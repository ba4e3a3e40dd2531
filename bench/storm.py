"""Boot storm benchmark: N simulated nodes booting at once, provisioner against a static
baseline, in the same run, on the same namespaces, link shaping and loss.

- provisioner: `provisioner lab storm`'s run (provisioner/lab/storm/appliance.py): the
  appliance and the scheduler in a lab namespace, nodes registered through the API, ready at
  the agent's first answered poll.
- baseline: dnsmasq (DHCP + TFTP) and nginx serving the same script shape, kernel, image and
  overlay, a static callback (`return 200`) and a static poll (`return 204`)
  (bench/peers/pxe.py), on a bridge in a namespace of its own.

The clients are the same code for both (provisioner/lab/storm/clients.py): the same MACs, the
same BIOS/UEFI mix, the same stages, from a client namespace on a veth to the server's bridge.
Runs alternate (provisioner, baseline, provisioner, ...) so drift in machine load hits both;
the table shows medians of --runs.

    .venv/bin/python bench/storm.py --nodes 100,300,1000 --runs 3
    .venv/bin/python bench/storm.py --nodes 1000 --link 1gbit --image-size 64M
    .venv/bin/python bench/storm.py --nodes 1000 --loss 1
    .venv/bin/python bench/storm.py --nodes 1000,10000 --control-only

Needs root, dnsmasq (dnsmasq-base), nginx, iproute2 (ip, tc), nftables, ipxe (ipxe.efi).
Every process is stopped by PID and every namespace removed at the end of each run, also on
Ctrl-C or SIGTERM; every run is bounded (--timeout).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package: run with the repository,
# not this directory, on the path.
REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.peers import cpu, nginx, pxe  # noqa: E402
from bench.peers.testbed import unwinding  # noqa: E402
from provisioner.lab import procs  # noqa: E402
from provisioner.lab.netns import LabNetwork, Namespace  # noqa: E402
from provisioner.lab.storm.appliance import (  # noqa: E402
    StormOptions,
    head_usage,
    parse_size,
    storm,
    write_image,
)
from provisioner.lab.storm.clients import node_specs, run_clients  # noqa: E402
from provisioner.lab.storm.network import ClientNet  # noqa: E402
from provisioner.lab.storm.node import BootPlan  # noqa: E402
from provisioner.lab.storm.report import HeadUsage, StormReport, render_text  # noqa: E402


def _quiet(_: str) -> None:
    pass


def _usage(pids: list[int]) -> HeadUsage:
    """CPU (with nginx's worker) and RSS summed over the baseline's servers."""
    seconds = sum(cpu.tree_seconds(pid) for pid in pids)
    parts = [head_usage(pid) for pid in pids]
    for pid in pids:  # nginx's worker
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        parts += [head_usage(int(kid)) for kid in kids]
    return HeadUsage(seconds, sum(p.rss_bytes for p in parts),
                     sum(p.peak_rss_bytes for p in parts))


def _wait_http(ns: Namespace, url: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while ns.http("GET", url, timeout=2).status == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"baseline: nothing answers {url}")
        time.sleep(0.2)


def baseline(options: StormOptions, work: Path) -> StormReport:
    """One storm against dnsmasq + nginx in a namespace of their own."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_image(work / "images", options.image_size)
    net = LabNetwork(f"pv-stormb-{secrets.token_hex(3)}", "br0", options.address)
    started: list[procs.Proc] = []
    client = ClientNet(net.namespace, net.bridge, net.subnet)
    net.create()
    try:
        ip = net.server_ip
        root = pxe.material(work, ip, work / "images" / "storm" / "1")
        first, last = pxe.pool(options.address, options.nodes)
        dnsmasq = procs.spawn("dnsmasq", net.command(pxe.dnsmasq_argv(
            net.bridge, work, ip, first, last, tftp_root=root / "tftp")), work / "dnsmasq.out")
        started.append(dnsmasq)
        conf = pxe.write_nginx(work / "nginx", ip, root / "www")
        started.append(procs.spawn("nginx", net.command(
            nginx.argv(nginx.binary(), work / "nginx", conf)), work / "nginx.out"))
        with Namespace(net.namespace) as ns:
            _wait_http(ns, f"http://{ip}/boot/script.ipxe")
        _wait_dnsmasq(work)
        return _baseline_storm(options, client, [p.pid for p in started])
    finally:
        client.close()
        for proc in started:
            procs.stop(proc)
        net.destroy()


def _wait_dnsmasq(work: Path) -> None:
    deadline = time.monotonic() + 30
    while "DHCP, IP range" not in _read(work / "dnsmasq.log"):
        if time.monotonic() > deadline:
            raise SystemExit(f"dnsmasq did not start; see {work}")
        time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _baseline_storm(options: StormOptions, client: ClientNet, pids: list[int]) -> StormReport:
    client.create()
    client.impair(options.link, options.loss)
    specs = node_specs(options.nodes, options.uefi_share)
    before = _usage(pids)
    run = asyncio.run(run_clients(client, specs, BootPlan(options.control_only, {}),
                                  workers=options.workers, timeout=options.timeout,
                                  say=_quiet))
    after = _usage(pids)
    head = HeadUsage(after.cpu_seconds - before.cpu_seconds, after.rss_bytes,
                     after.peak_rss_bytes)
    return StormReport(options.nodes, run.started, run.records, head, run.cpu_seconds,
                       label="baseline", settings=dataclasses.asdict(options))


# -- the table ------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    """Median of the runs; None (shown as "not all ready") if any run had a node fail."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def _p99s(report: StormReport) -> str:
    return " ".join(f"{s.stage} {s.p99 * 1000:.0f}" for s in report.stages()
                    if not math.isnan(s.p99))


def _fmt(value: float | None) -> str:
    return "not all ready" if value is None else f"{value:.2f} s"


def row(options: StormOptions, ours: list[StormReport], base: list[StormReport]) -> list[str]:
    a = _median([r.all_ready_seconds for r in ours])
    b = _median([r.all_ready_seconds for r in base])
    ratio = f"{a / b:.2f}" if a is not None and b else "-"
    link = options.link or "-"
    extra = ", ".join(x for x in (f"loss {options.loss:g} %" if options.loss else "",
                                  "control-only" if options.control_only else "",
                                  f"image {options.image_size >> 20} MiB") if x)
    head = statistics.median(r.head.cpu_seconds for r in ours if r.head) * 1000 / options.nodes
    base_head = statistics.median(r.head.cpu_seconds for r in base if r.head) * 1000 \
        / options.nodes
    return [str(options.nodes), link, extra, _fmt(a), _fmt(b), ratio,
            f"{head:.1f} / {base_head:.1f}", ours[-1].slowest_stage(), _p99s(ours[-1]),
            _p99s(base[-1])]


HEADERS = ["N", "link", "options", "provisioner", "baseline", "ratio",
           "head CPU ms/node (ours / baseline)", "our slowest stage",
           "our p99 per stage (ms)", "baseline p99 per stage (ms)"]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="100,300,1000", help="comma-separated N")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--link", default="", help="tc rate on the server's side (1gbit)")
    parser.add_argument("--loss", type=float, default=0.0, help="percent dropped each way")
    parser.add_argument("--image-size", default="16M")
    parser.add_argument("--control-only", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="also write every run's report here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="storm-bench-"))
    rows, reports = [], []
    try:
        with unwinding():
            for n in (int(x) for x in args.nodes.split(",")):
                options = StormOptions(n, args.link, args.loss, parse_size(args.image_size),
                                       args.control_only, args.workers, timeout=args.timeout)
                ours, base = [], []
                for run in range(args.runs):
                    ours.append(storm(options, work / "ours", say=_quiet))
                    base.append(baseline(options, work / "baseline"))
                    for report in (ours[-1], base[-1]):
                        print(f"-- N={n} run {run + 1}/{args.runs}")
                        print("\n".join(render_text(report)), flush=True)
                reports += [r.to_dict() for r in ours + base]
                rows.append(row(options, ours, base))
                print(markdown(rows), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, medians of {args.runs}:")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
