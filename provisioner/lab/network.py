"""The lab's network: one namespace holding a bridge with the appliance's address and one tap
per QEMU node.

    [ns provisioner-lab]  br0 10.99.0.1/24 -- tap0 (node01), tap1 (node02), ...

Nothing leaves the namespace: it has no link to the host, so the appliance's DHCP server can
be authoritative on br0 without answering anyone else. Removing the namespace removes the
bridge and the taps with it; `destroy()` is safe to call when it is already gone.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.errors import ConfigError

DEFAULT_NAMESPACE = "provisioner-lab"
DEFAULT_BRIDGE = "br0"
DEFAULT_ADDRESS = "10.99.0.1/24"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise ConfigError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()} "
                          "(the lab needs root and iproute2)")
    return result


def namespace_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


@dataclass(frozen=True)
class LabNetwork:
    namespace: str = DEFAULT_NAMESPACE
    bridge: str = DEFAULT_BRIDGE
    address: str = DEFAULT_ADDRESS  # the appliance's address on the bridge, with prefix

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def server_ip(self) -> str:
        return str(self.interface.ip)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.interface.network

    def create(self) -> None:
        """The namespace with loopback up and the bridge addressed and up."""
        if shutil.which("ip") is None or os.geteuid() != 0:
            raise ConfigError("the lab needs root and the `ip` command (iproute2)")
        if namespace_exists(self.namespace):
            raise ConfigError(f"network namespace {self.namespace} exists already; run "
                              "`provisioner lab down` first")
        ip("netns", "add", self.namespace)
        try:
            self._ns("link", "set", "lo", "up")
            self._ns("link", "add", self.bridge, "type", "bridge")
            # No STP and no forwarding delay: a tap must pass the firmware's first DHCP
            # DISCOVER at once, not after 15 s of listening and learning.
            self._ns("link", "set", self.bridge, "type", "bridge", "stp_state", "0",
                     "forward_delay", "0")
            self._ns("addr", "add", self.address, "dev", self.bridge)
            self._ns("link", "set", self.bridge, "up")
        except BaseException:
            self.destroy()
            raise

    def add_tap(self, tap: str) -> None:
        self._ns("tuntap", "add", "dev", tap, "mode", "tap")
        self._ns("link", "set", tap, "master", self.bridge)
        self._ns("link", "set", tap, "up")

    def destroy(self) -> None:
        """Remove the namespace (its bridge and taps go with it); nothing to do if absent."""
        if namespace_exists(self.namespace):
            ip("netns", "del", self.namespace, check=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (ip netns exec execs it: the PID stays the same)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def _ns(self, *args: str) -> None:
        ip("-n", self.namespace, *args)
