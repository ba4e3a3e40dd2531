"""A neighbouring machine holding a lease floods the boot planes while the victim power-cycles.

The intruder (tests/security/intruder.py: its own namespace on the lab bridge, an ordinary lease)
keeps 2,048 connections to the boot plane open, reopening each one the appliance closes, and
sends a stream of TFTP read requests, each from a new port. The victim must still boot to
ready: the intruder gets `[boot] max_per_source` connections and `[tftp] max_per_client`
transfers, the rest is refused at once, counted and logged with its address.

The victim's power cycle is timed under the flood, and in the full run (PROVISIONER_FULL=1) also
unloaded before it; the ratio is a figure, printed, not asserted (the machine running the tests
is shared; CI spares the unloaded cycle, a figure only). What is asserted is that the
victim reached ready while the flood went on, and that none of its connections or transfers
was refused: the caps fell on the intruder alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from provisioner.lab.netns import Namespace, stop_process
from tests.security.conftest import AttackLab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONNECTIONS = 2048

# Run by the intruder's Python inside its namespace: argv = boot host, boot port, connections.
FLOOD = r"""
import asyncio, collections, resource, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 3 * count + 1024), hard))
stats = collections.Counter()

async def hold():
    while True:  # open, hold until the appliance closes it, open again
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        stats["opened"] += 1
        try:
            await reader.read()
        except OSError:
            pass
        stats["closed"] += 1
        writer.close()
        await asyncio.sleep(1)

async def tftp():
    rrq = b"\x00\x01undionly.kpxe\x00octet\x00"
    recent = collections.deque()
    while True:  # ~500 RRQs a second, each from a new port, never acknowledged
        for _ in range(50):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.sendto(rrq, (host, 69))
            recent.append(sock)
            stats["rrq"] += 1
            if len(recent) > 256:
                recent.popleft().close()
        await asyncio.sleep(0.1)

async def report():
    while True:
        await asyncio.sleep(5)
        print(dict(stats), flush=True)

async def main():
    await asyncio.gather(*(hold() for _ in range(count)), tftp(), report())

asyncio.run(main())
"""


def counters(attack: AttackLab) -> dict[str, dict[str, int]]:
    state = attack.lab.state
    with Namespace(state.namespace) as ns:
        answer = ns.http("GET", f"{state.api_url}/api/v1/counters", token=state.admin_token)
    assert answer.status == 200, answer
    found: dict[str, dict[str, int]] = answer.json()
    return found


def timed_power_cycle(attack: AttackLab) -> float:
    start = time.monotonic()
    attack.reboot_victim()
    return time.monotonic() - start


def test_the_victim_boots_while_a_neighbour_floods_http_and_tftp(attack_lab: AttackLab) -> None:
    unloaded = timed_power_cycle(attack_lab) if os.environ.get("PROVISIONER_FULL") else None
    intruder = attack_lab.intruder()
    address = intruder.lease()
    boot = urlsplit(attack_lab.lab.state.boot_url)
    log = intruder.work / "flood.log"
    with log.open("w") as output:
        flood = subprocess.Popen(
            ["ip", "netns", "exec", intruder.netns, sys.executable, "-c", FLOOD,
             str(boot.hostname), str(boot.port or 80), str(CONNECTIONS)],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while counters(attack_lab)["boot"].get("refused:per_source", 0) < CONNECTIONS // 2:
            assert flood.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the flood did not start"
            time.sleep(1)
        loaded = timed_power_cycle(attack_lab)
        assert flood.poll() is None, log.read_text()  # it flooded all along
        seen = counters(attack_lab)
    finally:
        stop_process(flood)
    compared = (f"{unloaded:.1f} s unloaded, {loaded:.1f} s under the flood "
                f"({loaded / unloaded:.2f}x)" if unloaded else f"{loaded:.1f} s under the flood")
    print(f"victim power cycle to ready: {compared}; boot {seen['boot']}; tftp {seen['tftp']}; "
          f"intruder: {log.read_text().strip().splitlines()[-1:]}")
    assert seen["boot"]["refused:per_source"] > CONNECTIONS
    assert seen["tftp"]["rejected:busy_client"] > 0
    logged = attack_lab.appliance_log()
    assert f"refused a connection from {address}" in logged
    assert f"tftp: refused {address}:" in logged
    victim = attack_lab.view().ip
    assert victim is not None and victim != str(address)
    assert f"refused a connection from {victim}" not in logged
    assert f"tftp: refused {victim}:" not in logged
