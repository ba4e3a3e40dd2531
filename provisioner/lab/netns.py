"""Network namespaces joined by a veth pair: a private segment for servers and real clients.

    [ns SERVER] veth-s  <== veth ==>  veth-c [ns CLIENT]
      10.R.N.1/24                        10.R.N.2/24

Traffic stays inside the two namespaces: each has only its loopback and its end of the veth, and
the default route points at the veth so that limited broadcasts (DHCP) go through it. Names are
random so several runs can coexist; `close()` removes both namespaces (the veth goes with them)
and kills, by PID, every process started with `spawn`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from provisioner.errors import ConfigError


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if result.returncode != 0:
        raise ConfigError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()} "
                          "(network namespaces need root and iproute2)")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, and its children, by PID: `sig`, then
    SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class NetnsPair:
    server_ns: str
    client_ns: str
    server_ip: ipaddress.IPv4Address
    client_ip: ipaddress.IPv4Address
    network: ipaddress.IPv4Network
    server_if: str = "veth-s"
    client_if: str = "veth-c"
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @classmethod
    def create(cls, mtu: int = 1500, subnet: str | None = None) -> NetnsPair:
        if shutil.which("ip") is None or os.geteuid() != 0:
            raise ConfigError("network namespaces need root and the `ip` command (iproute2)")
        tag = secrets.token_hex(3)
        net = ipaddress.IPv4Network(subnet or f"10.{200 + secrets.randbelow(50)}."
                                    f"{secrets.randbelow(256)}.0/24")
        pair = cls(f"pv-{tag}-s", f"pv-{tag}-c", net.network_address + 1,
                   net.network_address + 2, net)
        try:
            pair._build(mtu)
        except BaseException:
            pair.close()
            raise
        return pair

    def _build(self, mtu: int) -> None:
        _ip("netns", "add", self.server_ns)
        _ip("netns", "add", self.client_ns)
        _ip("-n", self.server_ns, "link", "add", self.server_if, "type", "veth", "peer", "name",
            self.client_if, "netns", self.client_ns)
        for ns, ifname, addr in ((self.server_ns, self.server_if, self.server_ip),
                                 (self.client_ns, self.client_if, self.client_ip)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ifname, "mtu", str(mtu), "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{self.network.prefixlen}", "dev", ifname)
            _ip("-n", ns, "route", "add", "default", "dev", ifname)

    def command(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a namespace (bounded by `timeout`)."""
        return subprocess.run(self.command(ns, argv), capture_output=True, text=True,
                              timeout=timeout, check=False, **kwargs)

    def spawn(self, ns: str, argv: Sequence[str], log: IO[Any] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process inside a namespace; close() kills it by PID."""
        proc = subprocess.Popen(self.command(ns, argv), stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
        stop_process(proc, sig)

    def close(self) -> None:
        for proc in self._procs:
            self.stop(proc)
        self._procs.clear()
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30,
                           check=False)

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
