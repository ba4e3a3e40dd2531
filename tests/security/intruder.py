"""A second machine on the lab's bridge: what a user's job on another compute node can reach.

It has its own network namespace, a veth whose other end is on the lab bridge, its own MAC,
and an ordinary DHCP lease from the appliance (busybox udhcpc, a real client). Its requests
come from that leased address, exactly as a process on a neighbouring node would send them.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from pathlib import Path
from typing import Any

from provisioner.lab.lab import Lab
from provisioner.lab.netns import HttpAnswer, Namespace

UDHCPC_SCRIPT = """#!/bin/sh
# busybox udhcpc calls this with the lease in its environment ($ip, $mask as a prefix length)
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        echo "$ip" > "$LEASE_FILE"
        ;;
esac
"""


class NoLease(AssertionError):
    """The appliance gave the intruder no lease."""


class Intruder:
    def __init__(self, lab: Lab, mac: str, work: Path) -> None:
        tag = secrets.token_hex(3)
        self.lab, self.mac, self.work = lab, mac, work
        self.netns = f"pv-intr-{tag}"
        self.port = f"vi-{tag}"  # its veth end on the lab bridge
        self.ip: ipaddress.IPv4Address | None = None
        work.mkdir(parents=True, exist_ok=True)
        self._ip("netns", "add", self.netns)
        self._ip("link", "add", self.port, "type", "veth", "peer", "name", "eth0",
                 "netns", self.netns)
        self._ip("link", "set", self.port, "netns", lab.state.namespace)
        self._ip("-n", lab.state.namespace, "link", "set", self.port, "master", lab.state.bridge)
        self._ip("-n", lab.state.namespace, "link", "set", self.port, "up")
        self._ip("-n", self.netns, "link", "set", "eth0", "address", mac)
        self._ip("-n", self.netns, "link", "set", "eth0", "up")
        self._ip("-n", self.netns, "link", "set", "lo", "up")
        self.ns = Namespace(self.netns)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def lease(self, *options: str, attempts: int = 3) -> ipaddress.IPv4Address:
        """A DHCP lease through busybox udhcpc (extra `options`, e.g. "-x", "0x52:HEX")."""
        script = self.work / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        lease_file = self.work / "lease"
        lease_file.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", self.netns, "env", f"LEASE_FILE={lease_file}",
                "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(attempts),
                "-T", "2", "-s", str(script), *options]
        subprocess.run(argv, capture_output=True, timeout=60, check=False)
        if not lease_file.exists():
            raise NoLease(f"{self.mac} got no lease from the appliance")
        self.ip = ipaddress.IPv4Address(lease_file.read_text().strip())
        return self.ip

    def http(self, method: str, url: str, *, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> HttpAnswer:
        return self.ns.http(method, url, body=body, token=token, headers=headers)

    def boot(self, path: str, method: str = "GET") -> HttpAnswer:
        """A request to the lab's boot plane."""
        return self.http(method, f"{self.lab.state.boot_url}{path}")

    def close(self) -> None:
        self.ns.close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True,
                       timeout=30)
