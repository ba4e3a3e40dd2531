"""The built busybox image boots: QEMU (TCG) with the Debian cloud kernel, `-initrd` = our
image.cpio.xz followed by a per-node overlay from OverlayBuilder, on a private bridge in a
network namespace with busybox udhcpd and a small HTTP server standing in for the appliance.

This is the proof that the xz format (CRC32), the cpio, the module load order and /init are
right: the console must show /init bringing the network up, and the callback must arrive with
the node's token and hardware facts.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provisioner.boot.overlay import OverlayBuilder
from provisioner.images.build.builder import BuildRequest, ImageBuilder
from provisioner.images.build.kernel import KernelTree
from provisioner.images.format.catalog import ImageCatalog
from provisioner.lab.netns import stop_process
from provisioner.nodes.model import MacAddress, Node
from provisioner.render.environment import BootContext, Renderer

pytestmark = pytest.mark.netns

MAC = "52:54:00:5a:00:01"
BOOT_TIMEOUT = 240.0  # TCG boots in 25-60 s; shared cores can be slower

# The appliance's node plane, reduced to what /init talks to: record the body, answer 200.
SERVER = r"""
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "ab") as f:
            f.write(json.dumps({"path": self.path, "body": body.decode()}).encode() + b"\n")
        out = b'{"state": "booted"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[3], int(sys.argv[1])), H).serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Segment:
    """A namespace holding a bridge (the head node's side) and a tap for QEMU."""

    ns: str
    address: str
    prefix: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[Any]:
        handle = log.open("wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        self.procs.append(proc)
        return proc


@pytest.fixture
def segment() -> Iterator[Segment]:
    tag = secrets.token_hex(3)
    prefix = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
    seg = Segment(f"pv-boot-{tag}", f"{prefix}.1", prefix)
    try:
        _ip("netns", "add", seg.ns)
        for args in (("link", "set", "lo", "up"), ("link", "add", "br0", "type", "bridge"),
                     ("tuntap", "add", "tap0", "mode", "tap"),
                     ("link", "set", "tap0", "master", "br0"), ("link", "set", "tap0", "up"),
                     ("addr", "add", f"{seg.address}/24", "dev", "br0"),
                     ("link", "set", "br0", "up")):
            _ip("-n", seg.ns, *args)
        yield seg
    finally:
        for proc in seg.procs:
            stop_process(proc)
        subprocess.run(["ip", "netns", "del", seg.ns], capture_output=True, timeout=30,
                       check=False)


def _overlay(renderer: Renderer, segment: Segment, token: str) -> bytes:
    node = Node(MacAddress(MAC), "node001")
    ctx = BootContext.for_node(node, {}, boot_base=f"http://{segment.address}:8081",
                               api_base=f"http://{segment.address}:8080", image_name="compute",
                               image_version="1", token=token)
    return OverlayBuilder(renderer).build(ctx, node_revision=1)


def _wait_for(log: Path, proc: subprocess.Popen[Any], text: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        console = log.read_text(errors="replace")
        if text in console or proc.poll() is not None:
            return console
        time.sleep(1)
    return log.read_text(errors="replace")


def test_busybox_image_boots_and_calls_back(tmp_path: Path, kernel: KernelTree,
                                            segment: Segment) -> None:
    renderer = Renderer()
    catalog = ImageCatalog(tmp_path / "images")
    builder = ImageBuilder(catalog, renderer, tmp_path / "cache")
    image = builder.build(BuildRequest("kickstart/compute.ks.j2", "compute",
                                       kernel=str(kernel.root))).image
    token = secrets.token_urlsafe(24)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(image.file("image.cpio.xz").read_bytes() + _overlay(renderer, segment,
                                                                           token))
    conf = tmp_path / "udhcpd.conf"
    conf.write_text(f"start {segment.prefix}.50\nend {segment.prefix}.60\ninterface br0\n"
                    f"lease_file {tmp_path}/leases\noption subnet 255.255.255.0\n"
                    f"option router {segment.address}\noption lease 600\n")
    segment.spawn(["busybox", "udhcpd", "-f", str(conf)], tmp_path / "udhcpd.log")
    calls = tmp_path / "calls.jsonl"
    segment.spawn([sys.executable, "-c", SERVER, "8080", str(calls), segment.address],
                  tmp_path / "server.log")
    console = tmp_path / "console.log"
    qemu = segment.spawn([
        "qemu-system-x86_64", "-M", "pc", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
        "-kernel", str(image.file("vmlinuz")), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1",
        "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"], console)
    text = _wait_for(console, qemu, "provisioner-init: callback accepted",
                     time.monotonic() + BOOT_TIMEOUT)
    tail = "\n".join(text.splitlines()[-40:])
    assert "provisioner-init: network up on eth0 ip=" + segment.prefix in text, tail
    assert "provisioner-init: callback accepted" in text, tail
    received = [json.loads(line) for line in calls.read_text().splitlines()]
    assert received and received[0]["path"] == "/node/v1/booted"
    body = json.loads(received[0]["body"])
    assert body["token"] == token and body["mac"] == MAC
    assert (body["image"], body["version"]) == ("compute", "1")
    facts = body["facts"]
    assert facts["cpus"] == 1 and 400 < facts["memory_mib"] <= 512
    assert {"name": "eth0", "mac": MAC} in facts["nics"]
