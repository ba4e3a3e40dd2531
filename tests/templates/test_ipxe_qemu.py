"""The shipped iPXE script run by real iPXE: QEMU (TCG, SeaBIOS + Debian's iPXE ROM) gets the
script URL from QEMU's user-network DHCP, and a local HTTP server plays the boot plane. The
overlay fails twice, so the script's retry path runs before the kernel boots; /init then calls
back with the token the overlay carried."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from provisioner.boot.overlay import OverlayBuilder
from provisioner.images.build.kernel import KernelTree
from provisioner.lab.netns import stop_process
from provisioner.nodes.model import Firmware, MacAddress, Node
from provisioner.render.environment import BootContext, Renderer
from tests.templates.bootimage import minimal_image

MAC = "52:54:00:12:34:57"
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


class BootPlane:
    """GET serves `files`; the overlay answers 503 for its first `fail_overlay` requests;
    POST /node/v1/booted records the body and answers 200."""

    def __init__(self, fail_overlay: int) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_overlay = fail_overlay
        self.log: list[str] = []
        self.callbacks: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = unquote(self.path)  # iPXE sends ':' in a path as %3A
                outer.log.append(path)
                data = outer.files.get(path)
                if path.endswith("overlay.cpio.xz") and outer.fail_overlay > 0:
                    outer.fail_overlay -= 1
                    data = None
                self.send_response(200 if data is not None else 503)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.callbacks.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> BootPlane:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()



def make_plane(kernel: KernelTree, *, fail_overlay: int, retries: int = 5) -> BootPlane:
    plane = BootPlane(fail_overlay)
    base = f"http://10.0.2.2:{plane.port}"  # QEMU user networking's alias of loopback
    node = Node(mac=MacAddress(MAC), name="ipxe1", firmware=Firmware.BIOS)
    ctx = BootContext.for_node(node, {"kernel_args": "panic=-1"}, boot_base=base,
                               api_base=base, image_name="t", image_version="1",
                               token="tok-ipxe", extra={"retries": retries})
    prefix = "/boot/images/t/1"
    plane.files = {
        f"/boot/{MAC}.ipxe": Renderer().render("ipxe/boot.ipxe.j2", ctx.variables()).encode(),
        f"{prefix}/vmlinuz": kernel.vmlinuz.read_bytes(),
        f"{prefix}/image.cpio.xz": minimal_image(kernel),
        f"/boot/nodes/{MAC}/overlay.cpio.xz": OverlayBuilder(Renderer()).build(
            ctx, node_revision=1),
    }
    return plane


def run_qemu(plane: BootPlane, console: Path, *, until: str | None = None,
             timeout: float = 240) -> int | None:
    """Boot the BIOS node; stop it once `until` shows on the console (else wait for its end).
    Returns QEMU's exit code (None when stopped)."""
    if not IPXE_ROM.exists():
        pytest.fail(f"{IPXE_ROM} is missing: install ipxe-qemu (scripts/setup.sh)")
    script_url = f"http://10.0.2.2:{plane.port}/boot/{MAC}.ipxe"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-device", "sga", "-m", "512",
         "-display", "none", "-vga", "none", "-monitor", "none", "-serial", f"file:{console}",
         "-netdev", f"user,id=n0,bootfile={script_url}",
         "-device", f"virtio-net-pci,netdev=n0,mac={MAC}", "-boot", "n", "-no-reboot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if until and console.exists() and until in console.read_text(errors="replace"):
                return None
            time.sleep(0.5)
        assert proc.poll() is not None, f"QEMU still running after {timeout} s"
        return proc.returncode
    finally:
        stop_process(proc)


def test_ipxe_script_retries_then_boots(kernel: KernelTree, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    with make_plane(kernel, fail_overlay=2) as plane:
        code = run_qemu(plane, console)
    text = console.read_text(errors="replace")
    overlay_gets = [p for p in plane.log if p.endswith("overlay.cpio.xz")]
    assert len(overlay_gets) == 3, (plane.log, text[-3000:])
    assert "fetching overlay" in text and "retrying in 5 s (attempt 1 of 5)" in text, text[-3000:]
    assert "image-init-reached token=tok-ipxe" in text, text[-3000:]
    assert code == 0
    assert plane.callbacks and plane.callbacks[0]["token"] == "tok-ipxe"
    assert plane.callbacks[0]["mac"] == MAC


def test_ipxe_script_gives_up_with_a_readable_message(kernel: KernelTree,
                                                      tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    with make_plane(kernel, fail_overlay=100, retries=2) as plane:
        run_qemu(plane, console, until="press a key for the iPXE shell")
    text = console.read_text(errors="replace")
    assert len([p for p in plane.log if p.endswith("overlay.cpio.xz")]) == 2
    assert "provisioner: boot of ipxe1 failed: fetching overlay http://" in text, text[-3000:]
    assert "failed 2 times" in text
    assert "provisioner image show t" in text
    assert not plane.callbacks
