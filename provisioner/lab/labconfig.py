"""The settings file the lab's appliance and scheduler run with, generated from LabOptions.

Everything binds to the bridge address inside the lab namespace: DHCP in full mode on the
bridge (discovery on), TFTP on port 69, the boot plane on port 80, the API with auth on, the
scheduler beside it, and the handoff to that scheduler unless `handoff` says otherwise (the
Slurm e2e test hands nodes to a slurmctld in the namespace). Every node defaults to the lab
image and the `qemu` power driver.

With several heads (`heads`, etcd only) head N has the bridge's next address (head 1 the
lab's, head 2 the one after it), a settings file and data dir of its own, the one image dir,
the store of a 3-member etcd cluster, `[ha] elect` on, and the other heads as fallbacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.lab.netns import DEFAULT_ADDRESS, DEFAULT_BRIDGE, DEFAULT_NAMESPACE, LabNetwork


def lab_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the lab's settings are read in, by its processes and by the CLI: the
    user's PROVISIONER_* variables would override the lab's own settings file (a data dir, a
    store), so they are left out."""
    return {k: v for k, v in (os.environ if env is None else env).items()
            if not k.startswith("PROVISIONER_")}


@dataclass(frozen=True)
class LabOptions:
    root: Path  # DATA_DIR/lab: state, logs, consoles, the appliance's data
    namespace: str = DEFAULT_NAMESPACE
    bridge: str = DEFAULT_BRIDGE
    address: str = DEFAULT_ADDRESS
    store: str = "sqlite"  # sqlite | etcd (an etcd the lab starts inside the namespace)
    images: Path | None = None  # image catalog; default ROOT/images (kept across labs)
    cache: Path | None = None  # kernel downloads; default ROOT/cache
    image: str = "compute"
    kickstart: str = "kickstart/compute.ks.j2"
    discovery: bool = True
    #: discovered nodes boot at once (lab only; a site accepts them with `node accept`)
    auto_accept: bool = True
    discovery_limit: int = 1024
    #: more [dhcp] lines, verbatim (tests: circuit_names, trusted_relays)
    dhcp_extra: str = ""
    #: more sections, verbatim, at the end of the settings (tests: [retries] deadlines)
    extra: str = ""
    #: the [handoff] section's lines, verbatim (tests: a Slurm controller in the namespace)
    handoff: str = 'kind = "builtin"'
    api_port: int = 8080
    boot_port: int = 80
    scheduler_port: int = 8090
    etcd_port: int = 2379
    memory_mib: int = 1024
    #: addresses in the DHCP pool, from the 100th of the subnet (a storm leases thousands)
    pool_size: int = 100
    #: the scheduler's bearer token (it listens beyond loopback); `Lab.create` makes one
    scheduler_token: str = ""
    #: appliances on the bridge (more than one needs the etcd store: a 3-member cluster)
    heads: int = 1
    #: seconds a dead head keeps the lead of the once-only work ([ha] leader_ttl; at least
    #: twice the lab's store timeout, 5 s)
    leader_ttl: float = 10.0

    @property
    def network(self) -> LabNetwork:
        return LabNetwork(self.namespace, self.bridge, self.address)

    @property
    def images_dir(self) -> Path:
        return self.images or self.root / "images"

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.root / "cache"

    @property
    def data_dir(self) -> Path:
        return self.root / "appliance"

    @property
    def config_path(self) -> Path:
        return head_config(self.root, 1)

    def url(self, port: int, head: int = 1) -> str:
        host = self.head_ip(head)
        return f"http://{host}" + ("" if port == 80 else f":{port}")

    def head_ip(self, head: int) -> str:
        return head_ip(self.network, head)

    def head_config(self, head: int) -> Path:
        return head_config(self.root, head)

    def head_data_dir(self, head: int) -> Path:
        return self.data_dir if head == 1 else self.root / f"appliance{head}"

    @property
    def etcd_ports(self) -> list[int]:
        """Client ports of the etcd members: one, or three with several heads (each member's
        peer port is its client port + 1)."""
        return [self.etcd_port + 100 * i for i in range(3 if self.heads > 1 else 1)]


def head_ip(network: LabNetwork, head: int) -> str:
    """Head `head`'s address on the bridge (head 1: the lab's address, then the next ones)."""
    return str(network.interface.ip + (head - 1))


def head_config(root: Path, head: int) -> Path:
    """Head `head`'s settings file (head 1: the lab's, which the CLI uses)."""
    return root / ("lab.toml" if head == 1 else f"lab-head{head}.toml")


def _q(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these values


def _ha(options: LabOptions, head: int) -> str:
    """The [ha] section of head `head` (and its [dhcp] server address), with several heads."""
    if options.heads == 1:
        return ""
    others = [_q(options.url(options.boot_port, other))
              for other in range(1, options.heads + 1) if other != head]
    return (f"\n[ha]\nname = \"head{head}\"\nelect = true\nleader_ttl = {options.leader_ttl}\n"
            f"fallback_urls = [{', '.join(others)}]\n")


def render_config(options: LabOptions, head: int = 1) -> str:
    net = options.network
    ip = options.head_ip(head)
    subnet = net.subnet
    hosts = list(subnet.hosts())
    endpoints = ", ".join(_q(f"{net.server_ip}:{port}") for port in options.etcd_ports)
    store = (f'backend = "etcd"\nendpoints = [{endpoints}]\nnamespace = "/lab"\ntimeout = 5.0'
             if options.store == "etcd" else 'backend = "sqlite"')
    # Several heads on one bridge: each is the DHCP server of its own address, and the others'
    # replies are not "foreign servers".
    dhcp_heads = (f'server_ip = {_q(ip)}\ndetect_other_servers = false\n'
                  if options.heads > 1 else "")
    return f"""# Generated by `provisioner lab up`; rewritten at every `lab up`.
data_dir = {_q(options.head_data_dir(head))}

[store]
{store}

[api]
listen = {_q(ip)}
port = {options.api_port}
auth = true
public_url = {_q(options.url(options.api_port, head))}

[tftp]
listen = {_q(ip)}
port = 69

[boot]
listen = {_q(ip)}
port = {options.boot_port}
images = {_q(options.images_dir)}

[dhcp]
mode = "full"
interface = {_q(options.bridge)}
discovery = {str(options.discovery).lower()}
auto_accept = {str(options.discovery and options.auto_accept).lower()}
discovery_limit = {options.discovery_limit}
{options.dhcp_extra}
{dhcp_heads}lease_time = 3600

[[dhcp.subnets]]
network = {_q(subnet)}
pool_start = {_q(hosts[99])}
pool_end = {_q(hosts[98 + options.pool_size])}

[images]
cache = {_q(options.cache_dir)}

[scheduler]
listen = {_q(net.server_ip)}
port = {options.scheduler_port}
url = {_q(options.url(options.scheduler_port))}
token = {_q(options.scheduler_token)}

[handoff]
{options.handoff}

[defaults]
image = {_q(options.image)}
power_driver = "qemu"
console = "ttyS0,115200"
{_ha(options, head)}{options.extra}"""
