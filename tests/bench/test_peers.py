"""bench/peers: the testbed cleans up after itself, Kea starts and perfdhcp's figures are read,
and the rate search converges within its bounds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bench.peers import dhcpd, perfdhcp
from bench.peers.testbed import Testbed, unwinding


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


@pytest.mark.netns
@needs_root
def test_an_interrupted_bench_leaves_no_process_and_no_namespace() -> None:
    pids: list[int] = []
    names: list[str] = []
    with pytest.raises(SystemExit) as ended, unwinding(), Testbed.create() as bed:
        assert bed.pair is not None
        names = [bed.pair.server_ns, bed.pair.client_ns]
        proc = bed.spawn_server(["sleep", "300"], Path(os.devnull))
        pids.append(proc.pid)
        assert all(name in namespaces() for name in names)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` on a running benchmark
    assert ended.value.code == 130
    assert not alive(pids[0])
    assert not any(name in namespaces() for name in names)


@pytest.mark.netns
@needs_root
@pytest.mark.skipif(shutil.which("kea-dhcp4") is None or shutil.which("perfdhcp") is None,
                    reason="needs kea-dhcp4-server and kea-admin (perfdhcp)")
def test_kea_answers_perfdhcp_and_its_figures_are_read(tmp_path: Path) -> None:
    pool = dhcpd.Pool("10.0.0.0/8", "10.1.0.0", "10.1.255.254", "255.0.0.0")
    with Testbed.create(subnet=pool.subnet) as bed:
        started: list[int] = []

        def start() -> list[subprocess.Popen[bytes]]:
            proc = dhcpd.start(bed, "kea", tmp_path / "kea", pool)
            started.append(proc.pid)
            return [proc]

        run = perfdhcp.measure(bed, start, perfdhcp.Load(period=2, clients=200), 50)
    assert run.sent >= 50 and run.acks > 0
    assert run.passes, run.line()
    assert run.latency_ms["DISCOVER-OFFER"]["p50"] is not None
    assert run.server_cpu_s > 0
    assert not alive(started[0])  # stopped by PID after the run
    assert (tmp_path / "kea" / "leases4.csv").read_text().count("10.1.") >= run.acks


def test_search_finds_the_highest_passing_rate_within_its_bounds() -> None:
    capacity = 3333
    asked: list[int] = []

    def measure_at(rate: int) -> perfdhcp.Run:
        asked.append(rate)
        acks = min(rate, capacity) * 10
        return perfdhcp.Run(rate, 10, sent=rate * 10, acks=acks)

    steps, good = perfdhcp.search(measure_at, start_rate=500, max_rate=64000, bisect=4)
    assert good is not None and 2000 <= good <= capacity
    assert capacity - good < 500  # four bisections between 2000 and 4000
    assert len(steps) == len(asked) <= 5 + 4


def test_search_walks_down_and_gives_up_for_a_server_that_never_answers() -> None:
    steps, good = perfdhcp.search(lambda rate: perfdhcp.Run(rate, 10, sent=rate * 10),
                                  start_rate=500, max_rate=64000, bisect=4)
    assert good is None
    assert [s.rate for s in steps] == [500, 250, 125, 62, 31]
