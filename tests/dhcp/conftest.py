"""Fixtures for the DHCP interop tests: `provisioner serve` in a network namespace, real clients
(busybox udhcpc, ISC dhclient, Kea's perfdhcp, raw datagrams) in the other one.

`dhcp_lab` (module scope): a NetnsPair; a sqlite data directory; `python -m provisioner serve
--log-level debug` in the server namespace, DHCP in full mode on the server veth with two
subnets: the directly attached network of the pair, and a relayed one whose relay (giaddr) is
the client namespace's address (perfdhcp acts as a relay agent). The API and the boot
HTTP server listen inside the server namespace, where every port is free. Readiness is a
broadcast DISCOVER from the client namespace answered by an OFFER (20 s at most). Teardown kills
the server by PID and deletes the namespaces even when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from provisioner.dhcp.packet import BROADCAST_FLAG, DhcpPacket, decode, encode
from provisioner.errors import MalformedPacket
from provisioner.lab.netns import NetnsPair
from tests.dhcp.loopback import BOOT_PORT, loopback  # noqa: F401  (loopback: a fixture)

READY_LIMIT = 20.0
API_PORT = 18099

# Sends datagrams to 255.255.255.255:67 from the client namespace (SO_BROADCAST, bound to the
# client veth, port 68) and prints, as JSON hex, every datagram that arrives on port 68 within
# `wait` seconds after the last send. Reads [ifname, wait, [[hex, port], ...]] from stdin (a
# 64 KiB datagram is too long for an argument).
PROBE_CLIENT = r"""
import json, socket, sys, time
ifname, wait, datagrams = json.load(sys.stdin)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode() + b"\0")  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
for hexed, port in datagrams:
    s.sendto(bytes.fromhex(hexed), ("255.255.255.255", port))
got, deadline = [], time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        got.append(s.recv(70000).hex())
    except socket.timeout:
        break
print(json.dumps(got))
"""

# udhcpc's event script: logs "<event> <ip>" and configures the address on bound/renew, as a
# real client does, so that unicast renew and release can leave from it.
UDHCPC_SCRIPT = """#!/bin/sh
echo "$1 $ip" >> "$UDHCPC_EVENTS"
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"""


def discover(chaddr: bytes, xid: int, **options: bytes) -> DhcpPacket:
    """A broadcast DHCPDISCOVER (the broadcast bit asks for a broadcast OFFER)."""
    opts = {53: b"\x01", **{int(k.removeprefix("o")): v for k, v in options.items()}}
    return DhcpPacket(op=1, xid=xid, chaddr=chaddr, flags=BROADCAST_FLAG, options=opts)


@dataclass
class DhcpLab:
    pair: NetnsPair
    base: Path
    data_dir: Path
    server: subprocess.Popen[Any]
    server_log: Path
    relayed: IPv4Network  # the subnet perfdhcp's relayed requests are served from

    @property
    def server_ip(self) -> IPv4Address:
        return self.pair.server_ip

    @property
    def pool(self) -> tuple[IPv4Address, IPv4Address]:
        net = self.pair.network
        return net[20], net[250]

    def log(self) -> str:
        try:
            return self.server_log.read_text(errors="replace")[-8000:]
        except OSError as exc:
            return f"(no server log: {exc})"

    def full_log(self) -> str:
        return self.server_log.read_text(errors="replace")

    def alive(self) -> None:
        assert self.server.poll() is None, f"the server exited:\n{self.log()}"

    def client(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the client namespace (bounded)."""
        return self.pair.run(self.pair.client_ns, argv, timeout=timeout)

    def new_mac(self) -> str:
        """Give the client veth a fresh locally administered MAC: each test is a new client."""
        mac = "02:" + secrets.token_bytes(5).hex(":")
        result = self.client(["ip", "link", "set", "dev", self.pair.client_if, "address", mac])
        assert result.returncode == 0, result.stderr
        return mac

    def drop_address(self, ip: str) -> None:
        """Remove an address a client configured (the pair's own address stays)."""
        if ip and ip != str(self.pair.client_ip):
            self.client(["ip", "addr", "del", f"{ip}/{self.pair.network.prefixlen}", "dev",
                         self.pair.client_if])

    def probe(self, *datagrams: bytes | tuple[bytes, int], wait: float = 1.0) -> list[bytes]:
        """Broadcast datagrams (to port 67 unless a port is given) from the client namespace;
        every datagram heard on port 68 until `wait` s after the last send."""
        items = [(d.hex(), 67) if isinstance(d, bytes) else (d[0].hex(), d[1])
                 for d in datagrams]
        args = json.dumps([self.pair.client_if, wait, items])
        result = self.pair.run(self.pair.client_ns, [sys.executable, "-c", PROBE_CLIENT],
                               timeout=20 + wait, input=args)
        assert result.returncode == 0, f"probe failed: {result.stderr}\n{self.log()}"
        return [bytes.fromhex(h) for h in json.loads(result.stdout)]

    def offers(self, replies: list[bytes], xid: int) -> list[DhcpPacket]:
        """The replies from our server to transaction `xid` (our own broadcasts are heard too)."""
        out = []
        for data in replies:
            try:
                packet = decode(data)
            except MalformedPacket:
                continue
            if packet.op == 2 and packet.xid == xid and packet.server_id == self.server_ip:
                out.append(packet)
        return out


def _wait_ready(lab: DhcpLab) -> None:
    deadline = time.monotonic() + READY_LIMIT
    chaddr = bytes.fromhex("02aabbccdd01")
    xid = 0x5EAD1
    while time.monotonic() < deadline:
        if lab.server.poll() is not None:
            break
        if lab.offers(lab.probe(encode(discover(chaddr, xid)), wait=0.5), xid):
            return
    pytest.fail(f"provisioner serve did not answer a DISCOVER within {READY_LIMIT:.0f} s "
                f"(exit status {lab.server.poll()})\n--- server log ---\n{lab.log()}")


@pytest.fixture(scope="module")
def dhcp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DhcpLab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "busybox", "dhclient", "perfdhcp"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: iproute2, busybox-static, "
                        "isc-dhcp-client, kea-admin)")
    base = tmp_path_factory.mktemp("dhcp-interop")
    data_dir = base / "data"
    pair = NetnsPair.create()
    try:
        net = pair.network
        relayed = IPv4Network(f"172.31.{secrets.randbelow(256)}.0/24")
        subnets = [
            {"network": str(net), "routers": [str(pair.server_ip)], "dns": [str(pair.server_ip)],
             "domain": "lab.test", "pool_start": str(net[20]), "pool_end": str(net[250])},
            # The relay's giaddr lies in the attached network above: the explicit relay must
            # still select this subnet (as with RFC 3527 link selection).
            {"network": str(relayed), "routers": [str(relayed[1])], "relay": str(pair.client_ip)},
        ]
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(data_dir), "PROVISIONER_CONFIG": "",
               "PROVISIONER_DHCP_MODE": "full", "PROVISIONER_DHCP_INTERFACE": pair.server_if,
               "PROVISIONER_DHCP_SUBNETS": json.dumps(subnets),
               "PROVISIONER_TFTP_LISTEN": str(pair.server_ip),
               "PROVISIONER_BOOT_PORT": str(BOOT_PORT), "PROVISIONER_API_LISTEN": "127.0.0.1",
               "PROVISIONER_API_PORT": str(API_PORT), "PYTHONUNBUFFERED": "1"}
        server_log = base / "serve.log"
        with server_log.open("w") as log:
            server = pair.spawn(pair.server_ns, [sys.executable, "-m", "provisioner", "serve",
                                                 "--log-level", "debug"], log=log, env=env)
        lab = DhcpLab(pair, base, data_dir, server, server_log, relayed)
        script = base / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        _wait_ready(lab)
        yield lab
    finally:
        pair.close()
