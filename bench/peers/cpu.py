"""CPU accounting for benchmarks on a shared machine.

A run's "background" is the CPU the whole machine used meanwhile (/proc/stat: user, nice,
system, irq, softirq, steal) minus the CPU of the benchmark itself (this process and its waited
children) and of the servers under test (from /proc/PID/stat, with their reaped children:
in.tftpd forks a process per transfer). A run with more than `MAX_BG_CORES` of it on average was
disturbed by other work and is repeated (`quietly`), the quietest attempt kept.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HZ = os.sysconf("SC_CLK_TCK")
MAX_BG_CORES = 0.3
RETRIES = 2  # extra attempts of a noisy run
PAUSE_S = 3.0

T = TypeVar("T")


def process_seconds(pid: int, *, children: bool = True) -> float:
    """utime + stime of `pid` (plus its reaped children's), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    last = 15 if children else 13
    return sum(int(v) for v in fields[11:last]) / HZ


def tree_seconds(pid: int) -> float:
    """The process, its reaped children, and its live direct children (nginx's workers)."""
    total = process_seconds(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return total + sum(process_seconds(int(k)) for k in kids)


def machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[0:3]) + sum(values[5:8])) / HZ


def own_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Reading:
    wall_s: float
    servers_cpu_s: float
    bg_cores: float

    @property
    def noisy(self) -> bool:
        return self.bg_cores > MAX_BG_CORES


class Meter:
    """with Meter(server_pids) as m: ...; then m.reading."""

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self.pids = list(pids)
        self.reading = Reading(0.0, 0.0, 0.0)

    def _servers(self) -> float:
        return sum(tree_seconds(pid) for pid in self.pids)

    def __enter__(self) -> Meter:
        self._t0 = time.monotonic()
        self._busy0, self._own0, self._srv0 = (machine_busy_seconds(), own_seconds(),
                                               self._servers())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self._t0)
        servers = self._servers() - self._srv0
        ours = own_seconds() - self._own0 + servers
        background = max(0.0, machine_busy_seconds() - self._busy0 - ours)
        self.reading = Reading(round(wall, 3), round(servers, 3), round(background / wall, 2))


def quietly(measure: Callable[[], T], pids: Iterable[int], label: str,
            say: Callable[[str], None] = print) -> tuple[T, Reading]:
    """measure() under a Meter, repeated (at most RETRIES times, after a pause) while the
    background was above MAX_BG_CORES; the quietest attempt is returned."""
    pids = list(pids)
    best: tuple[T, Reading] | None = None
    for attempt in range(RETRIES + 1):
        with Meter(pids) as meter:
            result = measure()
        if best is None or meter.reading.bg_cores < best[1].bg_cores:
            best = (result, meter.reading)
        if not meter.reading.noisy:
            break
        if attempt < RETRIES:
            say(f"    ({label}: background {meter.reading.bg_cores:.2f} cores > "
                f"{MAX_BG_CORES}, again in {PAUSE_S:.0f} s)")
            time.sleep(PAUSE_S)
    assert best is not None
    return best
