"""Boot benchmark: seconds from QEMU start to `ready` for a lab node, provisioner against a
baseline of dnsmasq (DHCP + TFTP) plus a static HTTP server, in the same run, for each image:
the busybox `compute` image and the Debian bookworm image with systemd (`debian`,
templates/kickstart/debian.ks.j2), with each image's build time and size.

Both sides boot the same QEMU command (SeaBIOS + iPXE ROM, TCG) on a bridge in a fresh network
namespace, with the same kernel, image and overlay fetched over HTTP:

- provisioner: `provisioner serve` + `provisioner scheduler serve` (lab settings, sqlite);
  ready = the node is `ready` in the store after the scheduler confirmed the handoff.
- baseline: dnsmasq 2.90 (`--no-ping`: no ICMP check before offers) answers DHCP and sends the
  iPXE ROM to `http://10.99.0.1/boot/<mac>.ipxe`; nginx (bench/peers/nginx.py: one worker,
  sendfile) serves that script (captured from provisioner, so the same kernel command line),
  the kernel, the image and the overlay; ready = the node's boot callback arriving at a tiny
  HTTP listener on port 8080 (for the Debian image: the callback of its
  provisioner-booted.service, after multi-user.target, not /init's init-started). The
  listener only marks the time: no file goes through it.

Runs alternate between the two (provisioner, baseline, provisioner, ...) so drift in machine
load hits both. Then N nodes booting together, time until the last is ready.

    .venv/bin/python bench/boot.py --runs 3 --nodes 4
    .venv/bin/python bench/boot.py --runs 1 --nodes 2      # quick: a few minutes
    .venv/bin/python bench/boot.py --runs 1 --nodes 1 --images debian

Needs root, qemu-system-x86, ipxe-qemu, dnsmasq (dnsmasq-base; its command line is
bench/peers/dhcpd.py's pxe_argv) and nginx. The lab network is a bridge in a namespace of its own
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
import http.client  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.peers import dhcpd, nginx  # noqa: E402
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
KICKSTARTS = {"compute": "kickstart/compute.ks.j2", "debian": "kickstart/debian.ks.j2"}
CALLBACK_PATH = "/node/v1/booted"
CAPTURE_HOST = 240  # capture's reserved addresses: 10.99.0.241.. (the leases start at .100)


# -- the baseline's callback listener: POST on :8080, the time each node is ready -------------


def serve_callbacks(host: str, marks: Path) -> None:
    """Run inside the baseline namespace (`boot.py --serve-callbacks`): POST /node/v1/booted on
    8080 appends `<time> <mac>` lines to `marks` (any other POST, such as a systemd image's
    init-started, is answered and not counted). The files are nginx's."""

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived = time.time()
            mac = str(json.loads(body or b"{}").get("mac", "?"))
            if self.path == CALLBACK_PATH:
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

    http.server.ThreadingHTTPServer((host, 8080), Callback).serve_forever()


# -- captured boot material ---------------------------------------------------------------


def capture(work: Path, images: Path, macs: list[str], image: str) -> Path:
    """Boot material for the baseline, as provisioner serves it: per MAC the iPXE script and
    the overlay, plus the image files, laid out under the same URL paths. The boot plane
    serves a node's files only to that node's address, so each node is registered with a
    reserved address, which the bridge also gets and the requests are sent from."""
    root = work / f"baseline-root-{image}"
    lab = Lab.create(_options(work / f"capture-{image}", images, image), say=lambda _: None)
    try:
        for index, mac in enumerate(macs, start=1):
            node = lab.new_node("bios")
            assert node.qemu.mac == mac
            address = f"10.99.0.{CAPTURE_HOST + index}"
            lab.cli("node", "add", mac, "--name", node.qemu.name, "--firmware", "bios",
                    "--ip", address)
            subprocess.run(lab.network.command(["ip", "addr", "add", f"{address}/32", "dev",
                                                lab.network.bridge]), check=True, timeout=30)
            for path in (f"boot/{mac}.ipxe", f"boot/nodes/{mac}/overlay.cpio.xz"):
                body = _fetch_once_known(lab, path, address)
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(body)
    finally:
        lab.down(say=lambda _: None)
    version = (images / image / "current").readlink()
    shutil.copytree(images / image / version, root / "boot/images" / image / version.name)
    return root


def _fetch_once_known(lab: Lab, path: str, source: str) -> bytes:
    """GET `path` from address `source`. The node was registered by this process; the
    appliance learns of it through its store watch a moment later. Until then it answers "not
    registered" (404, or a wait-and-retry script), which must not become the baseline's
    material."""
    host, _, port = lab.state.boot_url.removeprefix("http://").partition(":")

    def get() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, int(port or 80), timeout=30,
                                          source_address=(source, 0))
        try:
            conn.request("GET", f"/{path}")
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    deadline = time.monotonic() + 15
    while True:
        status, body = lab.ns.call(get)
        if status == 200 and (not path.endswith(".ipxe") or b"initrd" in body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {status} {body[:300]!r}")
        time.sleep(0.2)


def _options(root: Path, images: Path, image: str) -> LabOptions:
    return LabOptions(root, namespace=f"pv-bench-{secrets.token_hex(3)}", images=images,
                      cache=CACHE, discovery=False, image=image)


# -- one run of each -----------------------------------------------------------------------


def run_provisioner(work: Path, images: Path, count: int, timeout: float, *, image: str,
                    memory_mib: int) -> float:
    lab = Lab.create(_options(work, images, image), say=lambda _: None)
    try:
        nodes = [lab.new_node("bios", memory_mib=memory_mib) for _ in range(count)]
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


def run_baseline(work: Path, root: Path, count: int, timeout: float, *,
                 memory_mib: int) -> float:
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
        conf = nginx.write_config(work / "nginx", ip, 80, root, as_root=True)
        started.append(procs.spawn("nginx", net.command(
            nginx.argv(nginx.binary(), work / "nginx", conf)), work / "nginx.out"))
        started.append(procs.spawn("callbacks", net.command([
            sys.executable, __file__, "--serve-callbacks", "--marks", str(marks)]),
            work / "callbacks.log"))
        _wait_port(net.namespace, f"http://{ip}/")
        _wait_port(net.namespace, f"http://{ip}:8080/")
        nodes = []
        for index in range(1, count + 1):
            tap = f"tap{index}"
            net.add_tap(tap)
            q = QemuNode(f"base{index}", lab_mac(index), "bios", tap, work / f"base{index}.qmp",
                         work / f"base{index}.console.log", memory_mib=memory_mib)
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


def build(images: Path, image: str) -> str:
    """Build `image` (its debootstrap tarball and .debs cached under CACHE); a line of figures."""
    config = images.parent / "build.toml"
    config.write_text(f'data_dir = "{images.parent / "data"}"\n[boot]\nimages = "{images}"\n'
                      f'[images]\ncache = "{CACHE}"\n')
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "provisioner", "--config", str(config), "image",
                    "build", KICKSTARTS[image], "--name", image], check=True,
                   env=lab_env(), stdout=subprocess.DEVNULL, timeout=1800)
    seconds = time.monotonic() - began
    files = json.loads((images / image / "current" / "manifest.json").read_text())["files"]
    xz = files["image.cpio.xz"]
    return (f"{image:<8} build {seconds:6.1f} s   image.cpio.xz {xz['size'] / 2**20:6.1f} MiB "
            f"(cpio {xz['cpio_size'] / 2**20:6.1f} MiB)   vmlinuz "
            f"{files['vmlinuz']['size'] / 2**20:.1f} MiB")


def summary(name: str, values: list[float]) -> str:
    shown = ", ".join(f"{v:.1f}" for v in values)
    return f"{name:<36} median {statistics.median(values):6.1f} s   runs: {shown}"


def main() -> None:
    with unwinding():
        run_all()


def run_all() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4, help="nodes booting together")
    parser.add_argument("--images", default="compute,debian",
                        help=f"comma-separated, of: {', '.join(KICKSTARTS)}")
    parser.add_argument("--memory", type=int, default=1536, help="MiB per node (the Debian "
                        "image unpacks 182 MiB into RAM)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--serve-callbacks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--marks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_callbacks:
        serve_callbacks("10.99.0.1", args.marks)
        return
    names = [n for n in args.images.split(",") if n]
    unknown = sorted(set(names) - set(KICKSTARTS))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(KICKSTARTS)}")
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        builds = [build(images, name) for name in names]
        for line in builds:
            print(line, flush=True)
        macs = [lab_mac(i) for i in range(1, max(args.nodes, 1) + 1)]
        roots = {name: capture(work, images, macs, name) for name in names}
        results: dict[str, list[float]] = {}
        failures: list[str] = []
        for name in names:
            for count in dict.fromkeys((1, args.nodes)):
                for run in range(args.runs):
                    one_round(work, images, roots[name], (name, count, run), args,
                              results=results, failures=failures)
        print()
        for line in builds:
            print(line)
        for failure in failures:
            print(f"FAILED {failure}\n")
        for key, values in results.items():
            print(summary(key, values))
        for name in names:
            for count in dict.fromkeys((1, args.nodes)):
                ours = results.get(f"{name}: provisioner, {count} node(s)")
                base = results.get(f"{name}: baseline, {count} node(s)")
                if ours and base:
                    ratio = statistics.median(ours) / statistics.median(base)
                    print(f"ratio provisioner / baseline, {name}, {count} node(s): {ratio:.3f} "
                          f"({(ratio - 1) * 100:+.1f}%)")


def one_round(work: Path, images: Path, root: Path, which: tuple[str, int, int],
              args: argparse.Namespace, *, results: dict[str, list[float]],
              failures: list[str]) -> None:
    """One provisioner boot then one baseline boot of `which` = (image, nodes, run)."""
    name, count, run = which
    for side in ("provisioner", "baseline"):
        run_dir = work / f"{name}-{side}-{count}-{run}"
        run_dir.mkdir()
        try:
            seconds = (run_provisioner(run_dir, images, count, args.timeout, image=name,
                                       memory_mib=args.memory)
                       if side == "provisioner"
                       else run_baseline(run_dir, root, count, args.timeout,
                                         memory_mib=args.memory))
        except (ProvisionerError, RuntimeError) as exc:
            # A failed boot is reported and counted, not timed; the run goes on.
            failures.append(f"{name}: {side}, {count} node(s), run {run + 1}: {exc}")
            print(f"  {name:<8} {side:<11} {count} node(s) run {run + 1}: FAILED", flush=True)
            continue
        results.setdefault(f"{name}: {side}, {count} node(s)", []).append(seconds)
        print(f"  {name:<8} {side:<11} {count} node(s) run {run + 1}: {seconds:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
