"""Kea's perfdhcp as the load for every DHCP server: DORA throughput and latency.

perfdhcp runs in the client namespace and broadcasts DISCOVERs with the broadcast flag set
(-B, like PXE ROMs on the same segment) from --clients distinct simulated clients (-R) at a
fixed offered rate for `period` seconds, then REQUESTs for each OFFER. An exchange with no answer
within `drop_time` (1 s) counts as lost. A run *passes* when fewer than 1 % of exchanges were
lost and the generator really sent 95 % of the offered rate.

`search` finds the highest passing rate: doubling from a start rate, then bisecting (to the
nearest 50/s) between the last pass and the first failure, each step a fresh run. Latency
percentiles of the DISCOVER->OFFER and REQUEST->ACK legs come from perfdhcp's per-exchange
timestamps (-x t). Every perfdhcp is killed after period + drop_time + 30 s.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.peers.cpu import Meter, process_seconds
from bench.peers.testbed import Testbed

LEGS = ("DISCOVER-OFFER", "REQUEST-ACK")
DROP_MAX_PCT = 1.0
SEC_RE = re.compile(r"\*\*\*Statistics for: (\S+)\*\*\*")
TS_RE = re.compile(r"\*\*\*Timestamps for packets: (\S+)\*\*\*")
KV_RE = re.compile(r"^(sent packets|received packets|drops): ([\d.]+)")
PAIR_RE = re.compile(r"^sent / received: ([\d.]+) / ([\d.]+)")


@dataclass(frozen=True)
class Load:
    period: int = 10  # seconds per run
    clients: int = 10000  # distinct simulated clients
    drop_time: float = 1.0


@dataclass
class Run:
    rate: int  # offered DISCOVERs/s
    period: int
    sent: float = 0.0
    acks: float = 0.0
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    bg_cores: float = 0.0

    @property
    def dora_per_s(self) -> float:
        return self.acks / self.period

    @property
    def drop_pct(self) -> float:
        return 100.0 * (1 - self.acks / self.sent) if self.sent else 100.0

    @property
    def passes(self) -> bool:
        return self.drop_pct < DROP_MAX_PCT and self.sent / self.period >= 0.95 * self.rate

    @property
    def cpu_ms_per_1k(self) -> float | None:
        return 1e6 * self.server_cpu_s / self.acks if self.acks else None

    def line(self) -> str:
        def ms(leg: str, q: str) -> str:
            value = self.latency_ms.get(leg, {}).get(q)
            return "-" if value is None else f"{value:.2f}"

        cpu = self.cpu_ms_per_1k
        return (f"rate {self.rate:6d}: DORA {self.dora_per_s:7.0f}/s  drops "
                f"{self.drop_pct:6.2f}%  DO p50/p99 {ms(LEGS[0], 'p50')}/{ms(LEGS[0], 'p99')} ms"
                f"  RA p50/p99 {ms(LEGS[1], 'p50')}/{ms(LEGS[1], 'p99')} ms  srv "
                f"{'-' if cpu is None else f'{cpu:.0f}'} cpu-ms/1k  bg {self.bg_cores:.2f}")


def argv(load: Load, rate: int, iface: str) -> list[str]:
    out = ["perfdhcp", "-4", "-g", "single", "-r", str(rate), "-R", str(load.clients),
           "-p", str(load.period), "-W", str(int(max(2.0, load.drop_time + 1) * 1e6)),
           "-x", "t", "-B", "-l", iface]
    if load.drop_time != 1.0:
        out[1:1] = ["-d", str(load.drop_time)]
    return out


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def parse(text: str, run: Run) -> None:
    """perfdhcp's statistics and -x t timestamps into `run`."""
    stats: dict[str, dict[str, float]] = {}
    lat: dict[str, list[float]] = {}
    section: str | None = None
    stamps: str | None = None
    for line in text.splitlines():
        if m := SEC_RE.match(line):
            section, stamps = m.group(1), None
            stats[section] = {}
        elif m := TS_RE.match(line):
            stamps, section = m.group(1), None
            lat[stamps] = []
        elif section and (m := KV_RE.match(line)):
            stats[section][m.group(1)] = float(m.group(2))
        elif stamps and (m := PAIR_RE.match(line)):
            lat[stamps].append((float(m.group(2)) - float(m.group(1))) * 1000.0)
    run.sent = stats.get(LEGS[0], {}).get("sent packets", 0.0)
    run.acks = stats.get(LEGS[1], {}).get("received packets", 0.0)
    for leg, values in lat.items():
        values.sort()
        run.latency_ms[leg] = {"p50": percentile(values, 50), "p99": percentile(values, 99),
                               "max": values[-1] if values else None}


Starter = Callable[[], Sequence[subprocess.Popen[Any]]]


def measure(bed: Testbed, start: Starter, load: Load, rate: int) -> Run:
    """A fresh server (start() -> its processes, the DHCP server first), one perfdhcp run at
    `rate`, the server stopped by PID. server_cpu_s is the DHCP server process's own CPU."""
    procs = start()
    run = Run(rate, load.period)
    try:
        cpu0 = process_seconds(procs[0].pid)
        with Meter(p.pid for p in procs) as meter:
            try:
                done = subprocess.run(bed.client(argv(load, rate, bed.client_if)),
                                      capture_output=True, text=True, check=False,
                                      timeout=load.period + load.drop_time + 30)
                text = done.stdout + done.stderr
            except subprocess.TimeoutExpired as exc:
                text = exc.stdout if isinstance(exc.stdout, str) else ""
        run.server_cpu_s = process_seconds(procs[0].pid) - cpu0
        run.bg_cores = meter.reading.bg_cores
    finally:
        for proc in reversed(procs):
            bed.stop(proc)
    parse(text, run)
    return run


def search(measure_at: Callable[[int], Run], start_rate: int, max_rate: int,
           bisect: int) -> tuple[list[Run], int | None]:
    """The highest passing offered rate, or None; every step's Run. At most
    log2(max/start) + 1 doublings, 5 halvings and `bisect` bisections."""
    steps: list[Run] = []
    rate, good, bad = start_rate, None, None
    while rate <= max_rate:
        steps.append(measure_at(rate))
        if not steps[-1].passes:
            bad = rate
            break
        good, rate = rate, rate * 2
    if good is None:  # even the start rate fails: walk down
        rate = start_rate // 2
        while rate >= 25 and good is None:
            steps.append(measure_at(rate))
            if steps[-1].passes:
                good = rate
            else:
                bad, rate = rate, rate // 2
    for _ in range(bisect):
        if good is None or bad is None:
            break
        mid = round((good + bad) / 2 / 50) * 50
        if mid <= good or mid >= bad:
            break
        steps.append(measure_at(mid))
        good, bad = (mid, bad) if steps[-1].passes else (good, mid)
    return steps, good


def median_of(runs: Sequence[Run], value: Callable[[Run], float | None]) -> float | None:
    values = [v for v in (value(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def summary(runs: Sequence[Run]) -> dict[str, Any]:
    """Medians over runs (JSON-ready)."""
    return {
        "rate": runs[0].rate if runs else None,
        "dora_per_s": median_of(runs, lambda r: r.dora_per_s),
        "drop_pct": median_of(runs, lambda r: r.drop_pct),
        "cpu_ms_per_1k": median_of(runs, lambda r: r.cpu_ms_per_1k),
        "bg_cores": [r.bg_cores for r in runs],
        "latency_ms": {leg: {q: _latency(runs, leg, q) for q in ("p50", "p99")}
                       for leg in LEGS},
    }


def _latency(runs: Sequence[Run], leg: str, q: str) -> float | None:
    return median_of(runs, lambda r: r.latency_ms.get(leg, {}).get(q))
