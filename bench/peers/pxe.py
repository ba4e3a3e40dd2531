"""The boot storm's baseline: a classic static PXE set-up serving what the appliance serves.

    root = pxe.material(work, ip, catalog_version_dir)   # the files, under URL paths
    dnsmasq = pxe.dnsmasq_argv(iface, work, first, last, ip, tftp_root=root / "tftp")
    conf = pxe.write_nginx(prefix, ip, root / "www")

- dnsmasq 2.90 (DHCP + TFTP): `--no-ping`, one range holding every node, iPXE (user class
  "iPXE") gets the boot script's URL, UEFI PXE (option 93 = 7) gets `ipxe.efi` over TFTP. No
  RFC 7440 windowsize: a window request runs lock-step. DHCP logging off (`--quiet-dhcp`),
  as a loaded site would run it.
- nginx (one worker, as root like the files it serves from the bench's private work dir;
  sendfile, access log off) on three ports, the appliance's three: :80 the
  script (one for every MAC: a static server knows no node), the kernel, the image and the
  overlay (one for every node, rendered from the same templates by provisioner's own
  OverlayBuilder, with a token); :8080 the callback (`return 200` with a body like the
  appliance's); :8090 the agent's poll (`return 204`: no work).
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

from bench.peers import nginx
from provisioner.boot.overlay import OverlayBuilder
from provisioner.lab.storm.appliance import pool_size
from provisioner.nodes.model import Firmware, MacAddress, Node
from provisioner.render.context import BootContext, Network
from provisioner.render.environment import Renderer

IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
SCRIPT = """#!ipxe
# baseline: one script for every node
set prov-kernel http://{ip}/boot/images/storm/1/vmlinuz
set prov-image http://{ip}/boot/images/storm/1/image.cpio.xz
set prov-overlay http://{ip}/boot/nodes/${{mac}}/overlay.cpio.xz
set prov-args initrd=image.cpio.xz initrd=overlay.cpio.xz console=tty0 console=ttyS0,115200 panic=30
kernel ${{prov-kernel}} ${{prov-args}}
initrd --name image.cpio.xz ${{prov-image}}
initrd --name overlay.cpio.xz ${{prov-overlay}}
boot
"""
SERVERS = """\
    server {{
        listen {ip}:80 backlog=4096;
        root {root};
        location ~ ^/boot/[^/]+\\.ipxe$ {{ try_files /boot/script.ipxe =404; }}
        location ~ ^/boot/nodes/[^/]+/overlay\\.cpio\\.xz$ {{
            try_files /boot/overlay.cpio.xz =404;
        }}
    }}
    server {{
        listen {ip}:8080 backlog=4096;
        location = /node/v1/booted {{
            default_type application/json;
            return 200 '{{"state": "booted", "node": "storm", "mac": "", "agent_token": "static"}}';
        }}
    }}
    server {{
        listen {ip}:8090 backlog=4096;
        location ~ ^/sched/v1/nodes/[^/]+/poll$ {{ return 204; }}
    }}
"""


def overlay(ip: str) -> bytes:
    """A node's overlay as the appliance renders it (templates/overlay/), for this server."""
    node = Node(mac=MacAddress("52:54:01:00:00:01"), name="storm00001", firmware=Firmware.BIOS)
    ctx = BootContext.for_node(node, {"console": "ttyS0,115200"}, boot_base=f"http://{ip}",
                               api_base=f"http://{ip}:8080", image_name="storm",
                               image_version="1", network=Network(),
                               scheduler_url=f"http://{ip}:8090", token="x" * 43)
    return OverlayBuilder(Renderer()).build(ctx, node_revision=1)


def material(work: Path, ip: str, image_dir: Path) -> Path:
    """www/ (script, overlay, the image version's two files) and tftp/ (ipxe.efi) under
    work/material; returns that directory."""
    root = work / "material"
    boot = root / "www" / "boot"
    (boot / "images" / "storm" / "1").mkdir(parents=True)
    (root / "tftp").mkdir()
    (boot / "script.ipxe").write_text(SCRIPT.format(ip=ip))
    (boot / "overlay.cpio.xz").write_bytes(overlay(ip))
    for name in ("vmlinuz", "image.cpio.xz"):
        shutil.copyfile(image_dir / name, boot / "images" / "storm" / "1" / name)
    shutil.copyfile(IPXE_EFI, root / "tftp" / "ipxe.efi")
    return root


def pool(address: str, nodes: int) -> tuple[str, str]:
    """The same range the appliance's lab leases from: the 100th host on, `pool_size` of
    them."""
    hosts = ipaddress.IPv4Interface(address).network.hosts()
    first = last = None
    for index, host in enumerate(hosts):
        if index == 99:
            first = host
        if index == 98 + pool_size(nodes):
            last = host
            break
    return str(first), str(last)


def dnsmasq_argv(iface: str, work: Path, ip: str, first: str, last: str, *,
                 tftp_root: Path) -> list[str]:
    return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
            f"--interface={iface}", "--bind-interfaces", "--user=root", "--group=root",
            f"--dhcp-range={first},{last},1h", "--dhcp-lease-max=1000000",
            "--dhcp-authoritative", "--quiet-dhcp",
            f"--dhcp-leasefile={work}/leases", f"--pid-file={work}/dnsmasq.pid",
            "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi64,option:client-arch,7",
            f"--dhcp-boot=tag:ipxe,http://{ip}/boot/script.ipxe",
            "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
            "--enable-tftp", f"--tftp-root={tftp_root}", "--tftp-max=20000",
            f"--log-facility={work}/dnsmasq.log"]


def write_nginx(prefix: Path, ip: str, root: Path) -> Path:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx.config_text(prefix, SERVERS.format(ip=ip, root=root), as_root=True,
                                      connections=16384, open_files=65536))
    return conf
