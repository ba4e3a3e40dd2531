"""Boot benchmark: seconds from QEMU start to `ready` for a lab node, provisioner against a
baseline of dnsmasq (DHCP + TFTP) plus a static HTTP server, in the same run.

Both sides boot the same QEMU command (SeaBIOS + iPXE ROM, TCG) on a bridge in a fresh network
namespace, with the same kernel, image and overlay fetched over HTTP:

- provisioner: `provisioner serve` + `provisioner scheduler serve` (lab settings, sqlite);
  ready = the node is `ready` in the store after the scheduler confirmed the handoff.
- baseline: dnsmasq 2.90 (`--no-ping`: no ICMP check before offers) answers DHCP and sends the
  iPXE ROM to `http://10.99.0.1/boot/<mac>.ipxe`; a Python http.server serves that script
  (captured from provisioner, so the same kernel command line), the kernel, the image and the
  overlay; ready = the node's boot callback arriving at a tiny HTTP listener on port 8080.

Runs alternate between the two (provisioner, baseline, provisioner, ...) so drift in machine
load hits both. Then N nodes booting together, time until the last is ready.

    .venv/bin/python bench/boot.py --runs 3 --nodes 4
    .venv/bin/python bench/boot.py --runs 1 --nodes 2      # quick: a few minutes

Needs root, qemu-system-x86, ipxe-qemu, dnsmasq (dnsmasq-base; its command line is
bench/peers/dhcpd.py's pxe_argv). The lab network is a bridge in a namespace of its own
(provisioner/lab/network.py), removed with every process by PID at the end of each run, also
on Ctrl-C or SIGTERM. Every run is bounded (--timeout per boot).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package: run with the repository,
# not this directory, on the path.
REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

import argparse  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.peers import dhcpd  # noqa: E402
from bench.peers.testbed import unwinding  # noqa: E402
from provisioner.errors import ProvisionerError  # noqa: E402
from provisioner.lab import procs  # noqa: E402
from provisioner.lab.lab import Lab, lab_env  # noqa: E402
from provisioner.lab.labconfig import LabOptions  # noqa: E402
from provisioner.lab.netns import LabNetwork, Namespace  # noqa: E402
from provisioner.lab.observe import wait_ready  # noqa: E402
from provisioner.lab.qemu import QemuNode, lab_mac  # noqa: E402
from provisioner.lab.storeview import snapshot  # noqa: E402

CACHE = REPO / ".cache" / "lab"


# -- the baseline's HTTP side: static files on :80, the callback listener on :8080 -----------


def serve_baseline(root: Path, host: str, marks: Path) -> None:
    """Run inside the baseline namespace (`boot.py --serve-baseline`): files under `root` on
    port 80, and POST /node/v1/booted on 8080 appending `<time> <mac>` lines to `marks`."""

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived = time.time()
            mac = str(json.loads(body or b"{}").get("mac", "?"))
            with marks.open("a") as out:
                out.write(f"{arrived} {mac}\n")
            answer = json.dumps({"state": "booted"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    files = http.server.ThreadingHTTPServer((host, 80), Files)
    callback = http.server.ThreadingHTTPServer((host, 8080), Callback)
    threading.Thread(target=callback.serve_forever, daemon=True).start()
    files.serve_forever()


# -- captured boot material ---------------------------------------------------------------


def capture(work: Path, images: Path, macs: list[str]) -> Path:
    """Boot material for the baseline, as provisioner serves it: per MAC the iPXE script and
    the overlay, plus the image files, laid out under the same URL paths."""
    root = work / "baseline-root"
    lab = Lab.create(_options(work / "capture", images), say=lambda _: None)
    try:
        for mac in macs:
            node = lab.new_node("bios")
            lab.register(node)
            assert node.qemu.mac == mac
            for path in (f"boot/{mac}.ipxe", f"boot/nodes/{mac}/overlay.cpio.xz"):
                body = _fetch_once_known(lab, path)
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(body)
    finally:
        lab.down(say=lambda _: None)
    version = (images / "compute" / "current").readlink()
    shutil.copytree(images / "compute" / version, root / "boot/images/compute" / version.name)
    return root


def _fetch_once_known(lab: Lab, path: str) -> bytes:
    """The node was registered by this process; the appliance learns of it through its store
    watch a moment later. Until then it answers "not registered" (404, or a wait-and-retry
    script), which must not become the baseline's material."""
    deadline = time.monotonic() + 15
    while True:
        answer = lab.ns.http("GET", f"{lab.state.boot_url}/{path}", timeout=30)
        real = answer.status == 200 and (not path.endswith(".ipxe") or b"initrd" in answer.body)
        if real:
            return answer.body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {answer}")
        time.sleep(0.2)


def _options(root: Path, images: Path) -> LabOptions:
    return LabOptions(root, namespace=f"pv-bench-{secrets.token_hex(3)}", images=images,
                      cache=CACHE, discovery=False)


# -- one run of each -----------------------------------------------------------------------


def run_provisioner(work: Path, images: Path, count: int, timeout: float) -> float:
    lab = Lab.create(_options(work, images), say=lambda _: None)
    try:
        nodes = [lab.new_node("bios") for _ in range(count)]
        for node in nodes:
            lab.register(node)
        began = time.time()
        for node in nodes:
            lab.start_node(node)
        # The time comes from the `ready` events' own timestamps, so polling slowly costs no
        # precision; polling fast would spend the CPU the booting VMs need (2 cores, TCG).
        wait_ready(lab, nodes, since=began, say=lambda _: None, interval=2.0,
                   need_scheduler=False)
        views = snapshot(lab, [n.qemu.mac for n in nodes])
        readies = [max(e.at for e in v.events if e.kind == "ready") for v in views.values()]
        return max(readies) - began
    finally:
        lab.down(say=lambda _: None)


def run_baseline(work: Path, root: Path, count: int, timeout: float) -> float:
    net = LabNetwork(f"pv-bench-{secrets.token_hex(3)}")
    net.create()
    started: list[procs.Proc] = []
    marks = work / "marks.txt"
    marks.unlink(missing_ok=True)
    try:
        ip = net.server_ip
        tftp = work / "tftp"
        tftp.mkdir(exist_ok=True)
        started.append(procs.spawn("dnsmasq", net.command(dhcpd.pxe_argv(
            net.bridge, work, "10.99.0.100", "10.99.0.199", boot=_per_mac_boot(ip, count),
            tftp_root=tftp)),
            work / "dnsmasq.out"))
        started.append(procs.spawn("http", net.command([
            sys.executable, __file__, "--serve-baseline", str(root), "--marks", str(marks)]),
            work / "http.log"))
        _wait_port(net.namespace, f"http://{ip}/")
        nodes = []
        for index in range(1, count + 1):
            tap = f"tap{index}"
            net.add_tap(tap)
            q = QemuNode(f"base{index}", lab_mac(index), "bios", tap, work / f"base{index}.qmp",
                         work / f"base{index}.console.log")
            q.prepare()
            nodes.append(q)
        began = time.time()
        for q in nodes:
            started.append(procs.spawn(q.name, net.command(q.argv()), work / f"{q.name}.log"))
        return _wait_marks(marks, count, began, timeout) - began
    finally:
        for proc in reversed(started):
            procs.stop(proc, grace=5)
        net.destroy()


def _per_mac_boot(ip: str, count: int) -> list[str]:
    """dnsmasq has no per-MAC file name substitution: one tag and one dhcp-boot per node."""
    args = []
    for index in range(1, count + 1):
        mac = lab_mac(index)
        args += [f"--dhcp-host={mac},set:n{index}",
                 f"--dhcp-boot=tag:ipxe,tag:n{index},http://{ip}/boot/{mac}.ipxe"]
    return args


def _wait_port(namespace: str, url: str) -> None:
    with Namespace(namespace) as ns:
        for _ in range(100):
            if ns.http("GET", url, timeout=1).status:
                return
            time.sleep(0.1)
    raise RuntimeError(f"baseline HTTP server did not start ({url})")


def _wait_marks(marks: Path, count: int, began: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marks.exists():
            lines = marks.read_text().split("\n")
            seen = {line.split()[1]: float(line.split()[0]) for line in lines if line.strip()}
            if len(seen) >= count:
                return max(seen.values())
        time.sleep(0.5)
    raise RuntimeError(f"baseline: {count} callback(s) not all seen in {timeout:.0f} s")


# -- main ----------------------------------------------------------------------------------


def build(images: Path) -> None:
    config = images.parent / "build.toml"
    config.write_text(f'data_dir = "{images.parent / "data"}"\n[boot]\nimages = "{images}"\n'
                      f'[images]\ncache = "{CACHE}"\n')
    subprocess.run([sys.executable, "-m", "provisioner", "--config", str(config), "image",
                    "build", "kickstart/compute.ks.j2", "--name", "compute"], check=True,
                   env=lab_env(), stdout=subprocess.DEVNULL, timeout=900)


def summary(name: str, values: list[float]) -> str:
    shown = ", ".join(f"{v:.1f}" for v in values)
    return f"{name:<28} median {statistics.median(values):6.1f} s   runs: {shown}"


def main() -> None:
    with unwinding():
        run_all()


def run_all() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4, help="nodes booting together")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--marks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, "10.99.0.1", args.marks)
        return
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        build(images)
        macs = [lab_mac(i) for i in range(1, max(args.nodes, 1) + 1)]
        root = capture(work, images, macs)
        results: dict[str, list[float]] = {}
        failures: list[str] = []
        for count in (1, args.nodes):
            for run in range(args.runs):
                for side in ("provisioner", "baseline"):
                    run_dir = work / f"{side}-{count}-{run}"
                    run_dir.mkdir()
                    try:
                        seconds = (run_provisioner(run_dir, images, count, args.timeout)
                                   if side == "provisioner"
                                   else run_baseline(run_dir, root, count, args.timeout))
                    except (ProvisionerError, RuntimeError) as exc:
                        # A failed boot is reported and counted, not timed; the run goes on.
                        failures.append(f"{side}, {count} node(s), run {run + 1}: {exc}")
                        print(f"  {side:<11} {count} node(s) run {run + 1}: FAILED", flush=True)
                        continue
                    results.setdefault(f"{side}, {count} node(s)", []).append(seconds)
                    print(f"  {side:<11} {count} node(s) run {run + 1}: {seconds:.1f} s",
                          flush=True)
        print()
        for failure in failures:
            print(f"FAILED {failure}\n")
        for name, values in results.items():
            print(summary(name, values))
        for count in (1, args.nodes):
            if not (results.get(f"provisioner, {count} node(s)")
                    and results.get(f"baseline, {count} node(s)")):
                continue
            ours = statistics.median(results[f"provisioner, {count} node(s)"])
            base = statistics.median(results[f"baseline, {count} node(s)"])
            print(f"ratio provisioner / baseline, {count} node(s): {ours / base:.3f} "
                  f"({(ours / base - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
