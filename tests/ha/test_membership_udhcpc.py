"""A real client (busybox udhcpc) bound by a head keeps its address when that head dies: two
heads (`provisioner serve` processes, bench/ha.py's) on one etcd in a server namespace, udhcpc
in the client namespace with 10 s leases. The head that bound it is SIGKILLed; the client's
next renewal is ACKed by the other head, which owns the client's bucket by then (a broadcast
rebinding, RFC 2131 4.4.5; here both heads share one veth, so the survivor may hear the unicast
renewal to the dead head's address already): the same address, never a new DISCOVER."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from bench.ha import POOL, Heads
from bench.peers.testbed import Testbed

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

LEASE = 10  # s: udhcpc renews at 5 s and rebinds at 8.75 s
BOUND = 30.0  # s: generous bound for each step on a shared machine
SCRIPT = """#!/bin/sh
echo "$1 $ip $serverid" >> "$UDHCPC_EVENTS"
case "$1" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"""


def events(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(check: object, what: str, detail: object) -> None:
    assert callable(check) and callable(detail)
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND:g} s: {what}\n{detail()}"
        time.sleep(0.1)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("busybox") is None
                    or shutil.which("etcd") is None, reason="needs root, busybox and etcd")
def test_a_bound_client_keeps_its_address_when_its_head_dies(tmp_path: Path) -> None:
    attached = [{"network": POOL.subnet, "pool_start": POOL.first, "pool_end": POOL.last}]
    with Testbed.create(subnet=POOL.subnet) as bed:
        assert bed.pair is not None
        heads = Heads(bed, tmp_path, {"PROVISIONER_DHCP_SUBNETS": json.dumps(attached),
                                      "PROVISIONER_DHCP_LEASE_TIME": str(LEASE)})
        procs = heads.start(2)
        script, log, seen = tmp_path / "udhcpc.sh", tmp_path / "udhcpc.log", tmp_path / "events"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        with log.open("w") as out:
            bed.pair.spawn(bed.pair.client_ns, [
                "busybox", "udhcpc", "-f", "-i", bed.client_if, "-t", "5", "-T", "1",
                "-s", str(script)], log=out, env={**os.environ, "UDHCPC_EVENTS": str(seen)})

        def detail() -> str:
            return f"events {events(seen)}\n{log.read_text()}"

        wait_for(lambda: any(e[0] == "bound" for e in events(seen)), "udhcpc bound", detail)
        _, ip, server = next(e for e in events(seen) if e[0] == "bound")
        victim = heads.addresses.index(server)
        os.kill(procs[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        before = len(events(seen))
        wait_for(lambda: any(e[0] == "renew" and e[2] != server for e in events(seen)[before:]),
                 "a renewal ACKed by the other head", detail)
        print(f"udhcpc renewed {ip} through the other head {time.monotonic() - killed:.1f} s "
              f"after its head was killed ({LEASE} s leases)")
        after = events(seen)[before:]
        assert all(e[0] == "renew" and e[1] == ip for e in after), detail()
        assert log.read_text().count("broadcasting discover") == 1, detail()
