"""Network namespaces: the one place that makes them, enters them and runs things in them.

Three shapes, for three uses:

- `NetnsPair`: two namespaces joined by a veth pair, a private segment on which the protocol
  tests and benches put a server and real clients:

      [ns SERVER] veth-s  <== veth ==>  veth-c [ns CLIENT]
        10.R.N.1/24                        10.R.N.2/24

  Each has only its loopback and its end of the veth, and the default route points at the
  veth so that limited broadcasts (DHCP) go through it. Names are random so several runs can
  coexist; `close()` removes both namespaces and kills, by PID, what `spawn` started.

- `LabNetwork`: the lab's one namespace holding a bridge with the appliance's address and one
  tap per QEMU node:

      [ns provisioner-lab]  br0 10.99.0.1/24 -- tap1 (node001), tap2 (node002), ...

  It has no link to the host, so the appliance's DHCP server can be authoritative on br0
  without answering anyone else. Removing the namespace removes the bridge and taps with it.

- `Namespace`: reach into a namespace from the host side without a link to it. A thread may
  join a network namespace on its own (setns(2) with CLONE_NEWNET acts on the calling thread
  only): every socket it creates afterwards lives in the namespace, while the rest of the
  process stays where it was. `lab status`, the CLI's requests to a lab's appliance, scheduler
  and store, and the tests use one such thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from provisioner.errors import ConfigError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
DEFAULT_NAMESPACE = "provisioner-lab"
DEFAULT_BRIDGE = "br0"
DEFAULT_ADDRESS = "10.99.0.1/24"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip ARGS` (iproute2); a failure is a ConfigError naming the command."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise ConfigError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()} "
                          "(network namespaces need root and iproute2)")
    return result


def namespace_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def _need_root(what: str) -> None:
    if shutil.which("ip") is None or os.geteuid() != 0:
        raise ConfigError(f"{what} need root and the `ip` command (iproute2)")


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
        _need_root("network namespaces")
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
        ip("netns", "add", self.server_ns)
        ip("netns", "add", self.client_ns)
        ip("-n", self.server_ns, "link", "add", self.server_if, "type", "veth", "peer", "name",
            self.client_if, "netns", self.client_ns)
        for ns, ifname, addr in ((self.server_ns, self.server_if, self.server_ip),
                                 (self.client_ns, self.client_if, self.client_ip)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifname, "mtu", str(mtu), "up")
            ip("-n", ns, "addr", "add", f"{addr}/{self.network.prefixlen}", "dev", ifname)
            ip("-n", ns, "route", "add", "default", "dev", ifname)

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
        _need_root("the lab and its namespace")
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

    def add_address(self, address: str) -> None:
        """Another address on the bridge (a second head's), with the bridge's prefix."""
        self._ns("addr", "add", f"{address}/{self.interface.network.prefixlen}", "dev",
                 self.bridge)

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


def _enter(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


class HttpAnswer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {self.body[:200]!r})"


class Namespace:
    """A worker thread inside network namespace `name`; `close()` ends it."""

    def __init__(self, name: str) -> None:
        if not os.path.exists(f"/run/netns/{name}"):
            raise ConfigError(f"network namespace {name} does not exist (is the lab up?)")
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}",
                                        initializer=_enter, initargs=(name,))

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        return self._pool.submit(fn).result(timeout)

    def run(self, factory: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run a coroutine on a fresh event loop inside the namespace."""
        async def main() -> T:
            return await factory()
        return self.call(lambda: asyncio.run(main()), timeout)

    def http(self, method: str, url: str, *, body: Any = None, token: str | None = None,
             timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> HttpAnswer:
        """One HTTP request from inside the namespace; any status is returned, not raised
        (status 0: no answer at all)."""
        def send() -> HttpAnswer:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(url, data=data, method=method)
            if data is not None:
                request.add_header("Content-Type", "application/json")
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            for key, value in (headers or {}).items():
                request.add_header(key, value)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    return HttpAnswer(answer.status, answer.read())
            except urllib.error.HTTPError as exc:
                return HttpAnswer(exc.code, exc.read())
            except (urllib.error.URLError, OSError) as exc:
                return HttpAnswer(0, str(exc).encode())  # 0: nothing answered
        return self.call(send, timeout + 5)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
