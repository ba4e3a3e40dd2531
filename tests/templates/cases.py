"""Fixed boot contexts for the template tests: a BIOS node with a static address and an SSH
key, a UEFI node on DHCP with scheduler features and another head to fall back on, and a node
with no image yet."""

from __future__ import annotations

import ipaddress

from provisioner.nodes.model import Firmware, Group, MacAddress, Node, effective_values
from provisioner.render.environment import BootContext, Network

BOOT = "http://10.10.0.1:8081"
API = "http://10.10.0.1:8080"
SCHEDULER = "http://10.10.0.1:8090"
#: the other head of the UEFI case ([ha] fallback_urls)
OTHER_HEAD = ("http://10.10.0.2:8081", "http://10.10.0.2:8080")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGolden admin@head"


def bios_context(token: str | None = None) -> BootContext:
    compute = Group("compute", {"console": "ttyS0,115200", "power_driver": "ipmi",
                                "scheduler_partition": "batch"})
    node = Node(mac=MacAddress("52:54:00:00:00:01"), name="node001",
                ip=ipaddress.IPv4Address("10.10.0.11"), firmware=Firmware.BIOS,
                groups=("compute",), settings={"power_password": "hunter2"})
    settings = effective_values(node, {"compute": compute}, {})
    network = Network(ip="10.10.0.11", prefix=24, gateway="10.10.0.1", dns=("10.10.0.1",),
                      domain="cluster.example", mtu=9000)
    return BootContext.for_node(node, settings, boot_base=BOOT, api_base=API,
                                image_name="compute", image_version="3", network=network,
                                scheduler_url=SCHEDULER, ssh_keys=[KEY], token=token)


def uefi_context(token: str | None = None) -> BootContext:
    node = Node(mac=MacAddress("52:54:00:00:00:02"), name="node002", firmware=Firmware.UEFI)
    settings = {"console": "ttyS1,57600", "kernel_args": "panic=-1 quiet",
                "scheduler_features": "gpu, ib"}
    return BootContext.for_node(node, settings, boot_base=BOOT, api_base=API,
                                image_name="compute", image_version="4",
                                scheduler_url=SCHEDULER, token=token, fallbacks=[OTHER_HEAD])


def noimage_context() -> BootContext:
    node = Node(mac=MacAddress("52:54:00:00:00:03"), name="node003", firmware=Firmware.BIOS)
    return BootContext.for_node(node, {}, boot_base=BOOT, api_base=API)
