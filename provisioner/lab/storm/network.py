"""The storm's client side of the wire: a namespace of its own joined to a lab bridge by a veth,
and what the run does to that link.

    [ns SERVER: bridge, the server's address] -- sth-XXXX <== veth ==> stc [ns CLIENTS]

Each simulated node adds the address it leased to the client end (worker.AddressBook). The
server reaches them through one next hop, the client namespace's own address (the subnet's last
one): the kernel's neighbour table is one per machine, not per namespace, and its hard limit
(net.ipv4.neigh.default.gc_thresh3, 1,024 by default) would cap a storm at about a thousand
nodes with one ARP entry each; a shared machine's limit is not ours to raise. So the server's
routes for the two halves of the subnet point at that next hop (more specific than the
bridge's own route, so they win); DHCP is untouched (broadcast frames), and every node still
talks from its own address.

- `shape(rate)`: a token bucket (tc tbf) on the server's end of the veth, so what the head
  node sends to the nodes leaves at `rate`, as through a NIC of that speed.
- `drop(percent)`: nftables on the ingress hook of both ends, `numgen random` dropping that
  share of the packets in each direction (the kernel here has no netem). The hook is the
  ingress one so that raw DHCP frames (worker's AF_PACKET socket, bound to ETH_P_IP) are
  dropped too.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from provisioner.errors import ConfigError
from provisioner.lab.netns import ip, namespace_exists

CLIENT_IF: Final = "stc"
_RATE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(|k|m|g|t)(bit|bps)", re.I)
_SCALE: Final = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def rate_bits(rate: str) -> float:
    """bits/s of a tc rate ("1gbit", "100mbit", "125mbps"); ConfigError if not one."""
    found = _RATE.fullmatch(rate.strip())
    if found is None:
        raise ConfigError(f"--link {rate!r}: give a rate as tc does, such as 1gbit or 100mbit")
    bits = float(found[1]) * _SCALE[found[2].lower()]
    return bits * 8 if found[3].lower() == "bps" else bits


def tbf_burst(bits_per_second: float) -> int:
    """Bytes of burst: 10 ms at the rate, and never below 64 KiB (a GSO segment must fit)."""
    return max(64 << 10, int(bits_per_second / 8 / 100))


def loss_rule(percent: float) -> str:
    """The nftables match dropping `percent` % of packets, to 0.01 %."""
    if not 0 <= percent < 100:
        raise ConfigError(f"--loss {percent}: give a percentage from 0 to 100")
    return f"numgen random mod 10000 < {round(percent * 100)} drop"


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise ConfigError(f"{what} failed: {done.stderr.strip()}")


@dataclass
class ClientNet:
    server_ns: str
    bridge: str
    subnet: IPv4Network
    namespace: str = ""
    server_if: str = ""

    def create(self) -> None:
        tag = secrets.token_hex(3)
        self.namespace, self.server_if = f"pv-storm-{tag}-c", f"sth-{tag}"
        ip("netns", "add", self.namespace)
        try:
            ip("-n", self.server_ns, "link", "add", self.server_if, "type", "veth", "peer",
               "name", CLIENT_IF, "netns", self.namespace)
            ip("-n", self.server_ns, "link", "set", self.server_if, "master", self.bridge, "up")
            ip("-n", self.namespace, "link", "set", "lo", "up")
            ip("-n", self.namespace, "link", "set", CLIENT_IF, "up")
            ip("-n", self.namespace, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}",
               "dev", CLIENT_IF)
            for half in self.subnet.subnets(1):  # more specific than the bridge's own route
                ip("-n", self.server_ns, "route", "add", str(half), "via", str(self.gateway),
                   "dev", self.bridge, "onlink")
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self) -> IPv4Address:
        """The client namespace's own address: the next hop the server reaches nodes by."""
        return self.subnet.broadcast_address - 1

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def impair(self, link: str, loss: float) -> None:
        """The storm's link: shaped to `link` (a tc rate; "" leaves it as fast as veth goes)
        and losing `loss` percent of packets each way (0: none)."""
        if link:
            self.shape(link)
        if loss:
            self.drop(loss)

    def shape(self, rate: str) -> None:
        bits = rate_bits(rate)
        _run(["ip", "netns", "exec", self.server_ns, "tc", "qdisc", "replace", "dev",
              self.server_if, "root", "tbf", "rate", f"{int(bits)}bit", "burst",
              str(tbf_burst(bits)), "latency", "50ms"], f"tc tbf {rate}")

    def drop(self, percent: float) -> None:
        rule = loss_rule(percent)
        for ns, dev in ((self.namespace, CLIENT_IF), (self.server_ns, self.server_if)):
            script = (f"table netdev storm {{\n chain loss {{\n  type filter hook ingress "
                      f'device "{dev}" priority 0;\n  {rule}\n }}\n}}\n')
            _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], f"nft loss {percent}%",
                 stdin=script)

    def close(self) -> None:
        """Remove the client namespace (its veth goes with it, the server's end too)."""
        if self.namespace and namespace_exists(self.namespace):
            ip("netns", "del", self.namespace, check=False)
