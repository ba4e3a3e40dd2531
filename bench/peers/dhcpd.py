"""The DHCP peers: Kea (kea-dhcp4) and dnsmasq, each with a fresh, empty lease database.

    proc = dhcpd.start(bed, "kea", work, pool)

Kinds:
  kea             kea-dhcp4 2.2, memfile lease backend (persist=true: a CSV lease file on disk,
                  appended per lease, no fsync), one thread (its default), raw sockets on the
                  server's veth;
  dnsmasq         dnsmasq as shipped: an ICMP echo to each address before offering it
                  (RFC 2131 section 2.2 recommends the check; dnsmasq waits up to 3 s for an
                  answer), a log line per packet;
  dnsmasq-noping  the same with --no-ping.
Both answer on the server's veth only; the pool is inside the testbed's subnet.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers.testbed import Testbed

KINDS = ("kea", "dnsmasq", "dnsmasq-noping")
START_LIMIT_S = 30.0


@dataclass(frozen=True)
class Pool:
    subnet: str  # "10.0.0.0/8"
    first: str
    last: str
    netmask: str


def kea_config(iface: str, work: Path, pool: Pool) -> dict[str, Any]:
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": [iface], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True,
                           "name": str(work / "leases4.csv"), "lfc-interval": 3600},
        "valid-lifetime": 86400,
        "subnet4": [{"id": 1, "subnet": pool.subnet, "interface": iface,
                     "pools": [{"pool": f"{pool.first} - {pool.last}"}]}],
        # WARN everywhere but the start-up messages, so readiness can be read from the log
        # without a line per lease.
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(work / "kea.log")}]},
                    {"name": "kea-dhcp4.dhcp4", "severity": "INFO",
                     "output_options": [{"output": str(work / "kea.log")}]}],
    }}


def dnsmasq_argv(kind: str, iface: str, work: Path, pool: Pool) -> list[str]:
    argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            f"--interface={iface}", "--bind-interfaces", "--user=root", "--group=root",
            f"--dhcp-range={pool.first},{pool.last},{pool.netmask},24h",
            "--dhcp-lease-max=1000000", "--dhcp-authoritative",
            f"--dhcp-leasefile={work / 'leases'}", f"--pid-file={work / 'dnsmasq.pid'}",
            f"--log-facility={work / 'dnsmasq.log'}"]
    if kind == "dnsmasq-noping":
        argv.append("--no-ping")
    return argv


def start(bed: Testbed, kind: str, work: Path, pool: Pool) -> subprocess.Popen[Any]:
    """Start a peer in the bed's server namespace on an empty work dir; returns once it
    has logged that it serves (bounded)."""
    work.mkdir(parents=True, exist_ok=True)
    if kind == "kea":
        config = work / "kea-dhcp4.json"
        config.write_text(json.dumps(kea_config(bed.server_if, work, pool), indent=1))
        # pid and lock files in the work dir: never /run, never another Kea's
        env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
        proc = bed.spawn_server(["kea-dhcp4", "-c", str(config)], work / "stdout.log",
                                env=env, cwd=work)
        wait_for_text(proc, work / "kea.log", "DHCP4_STARTED")
    elif kind in ("dnsmasq", "dnsmasq-noping"):
        proc = bed.spawn_server(dnsmasq_argv(kind, bed.server_if, work, pool),
                                work / "stdout.log", cwd=work)
        wait_for_text(proc, work / "dnsmasq.log", "DHCP, IP range")
    else:
        raise ValueError(f"unknown DHCP peer {kind!r}; choose from {KINDS}")
    return proc


def wait_for_text(proc: subprocess.Popen[Any], path: Path, text: str,
                  limit: float = START_LIMIT_S) -> None:
    """Until `text` appears in the file at `path`; SystemExit if the process ends first or
    `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited at start (status {proc.returncode}); see "
                             f"{path.parent}")
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"no {text!r} in {path} within {limit:g} s")


def pxe_argv(iface: str, work: Path, first: str, last: str, *, boot: list[str],
             tftp_root: Path) -> list[str]:
    """dnsmasq as the DHCP + TFTP half of a classic PXE set-up (bench/boot.py's baseline):
    --no-ping, leases in `work`, `boot` the --dhcp-host / --dhcp-boot lines, TFTP from
    `tftp_root`, the iPXE user class tagged `ipxe`."""
    return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
            f"--interface={iface}", "--bind-interfaces", f"--dhcp-range={first},{last},1h",
            f"--dhcp-leasefile={work}/leases", f"--pid-file={work}/dnsmasq.pid",
            "--dhcp-userclass=set:ipxe,iPXE", *boot, "--dhcp-boot=tag:!ipxe,undionly.kpxe",
            "--enable-tftp", f"--tftp-root={tftp_root}", f"--log-facility={work}/dnsmasq.log"]
