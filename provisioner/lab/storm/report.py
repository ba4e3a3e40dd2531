"""What a storm measured, and how it is said: per-node records in, percentiles and a summary
out. Pure: no sockets, no clock; the workers and the run feed it numbers.

A node's record holds, per stage it went through, when the stage started and ended (seconds on
CLOCK_MONOTONIC, which every process on the machine shares) and how many retries it took. A
node is ready when its last stage (the scheduler agent's first poll) ended.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: the stages in boot order; a node goes through those its firmware and the run ask for
STAGES: Final = ("dhcp", "tftp", "dhcp-ipxe", "script", "kernel", "image", "overlay",
                 "callback", "poll")
#: the stages a --control-only run skips: the bulk transfers
BULK_STAGES: Final = frozenset({"tftp", "kernel", "image"})
PERCENTILES: Final = (50, 95, 99)


@dataclass
class NodeRecord:
    """One simulated node's boot, as its worker saw it."""

    mac: str
    arch: str  # "bios" or "uefi"
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    error: str = ""

    @property
    def ready(self) -> bool:
        return not self.error and "poll" in self.spans

    @property
    def ready_at(self) -> float | None:
        return self.spans["poll"][1] if self.ready else None

    def retry(self, stage: str) -> None:
        self.retries[stage] = self.retries.get(stage, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "arch": self.arch,
                "spans": {k: list(v) for k, v in self.spans.items()},
                "retries": dict(self.retries), "bytes": self.bytes_read, "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeRecord:
        spans = {str(k): (float(v[0]), float(v[1])) for k, v in data["spans"].items()}
        return cls(str(data["mac"]), str(data["arch"]), spans,
                   {str(k): int(v) for k, v in data["retries"].items()}, int(data["bytes"]),
                   str(data["error"]))


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (the smallest value with at least pct% of the values at or
    below it); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class StageSummary:
    stage: str
    count: int
    p50: float
    p95: float
    p99: float
    max: float
    retries: int

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "count": self.count, "p50": self.p50, "p95": self.p95,
                "p99": self.p99, "max": self.max, "retries": self.retries}


def summarize_stage(stage: str, records: Iterable[NodeRecord]) -> StageSummary:
    chosen = list(records)
    took = [r.spans[stage][1] - r.spans[stage][0] for r in chosen if stage in r.spans]
    retries = sum(r.retries.get(stage, 0) for r in chosen)
    p50, p95, p99 = (percentile(took, p) for p in PERCENTILES)
    return StageSummary(stage, len(took), p50, p95, p99, max(took, default=math.nan), retries)


@dataclass(frozen=True)
class HeadUsage:
    """The server side's CPU seconds and resident memory over the storm (from /proc)."""

    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


@dataclass
class StormReport:
    nodes: int
    started: float  # monotonic seconds: when the workers were told to go
    records: list[NodeRecord]
    head: HeadUsage | None = None
    client_cpu_seconds: float = 0.0
    label: str = "provisioner"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> list[NodeRecord]:
        return [r for r in self.records if r.ready]

    @property
    def all_ready_seconds(self) -> float | None:
        """Seconds from the start until the last of the N nodes was ready; None if any was
        not."""
        ready = self.ready
        if len(ready) < self.nodes:
            return None
        return max(r.ready_at or 0.0 for r in ready) - self.started

    @property
    def bytes_served(self) -> int:
        return sum(r.bytes_read for r in self.records)

    def stages(self) -> list[StageSummary]:
        found = [summarize_stage(s, self.records) for s in STAGES]
        return [s for s in found if s.count or s.retries]

    def slowest_stage(self) -> str:
        """The stage with the largest p99: the one that bounds the storm."""
        stages = [s for s in self.stages() if s.count]
        return max(stages, key=lambda s: s.p99).stage if stages else "-"

    def errors(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for r in self.records:
            if r.error:
                found[r.error] = found.get(r.error, 0) + 1
        return found

    def to_dict(self) -> dict[str, Any]:
        head = self.head
        return {"label": self.label, "nodes": self.nodes, "ready": len(self.ready),
                "all_ready_seconds": self.all_ready_seconds, "bytes_served": self.bytes_served,
                "stages": [s.to_dict() for s in self.stages()],
                "slowest_stage": self.slowest_stage(), "errors": self.errors(),
                "head": None if head is None else {
                    "cpu_seconds": head.cpu_seconds, "rss_bytes": head.rss_bytes,
                    "peak_rss_bytes": head.peak_rss_bytes,
                    "cpu_ms_per_node": 1000 * head.cpu_seconds / max(1, self.nodes)},
                "client_cpu_seconds": self.client_cpu_seconds, "settings": self.settings}


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def progress_line(elapsed: float, at_stage: Mapping[str, int], ready: int, total: int) -> str:
    """`12.3 s  dhcp 40  script 2  image 300 ...  ready 58/400`: nodes now in each stage."""
    parts = [f"{s} {at_stage[s]}" for s in STAGES if at_stage.get(s)]
    failed = at_stage.get("failed", 0)
    tail = f"  failed {failed}" if failed else ""
    return f"storm: {elapsed:6.1f} s  {'  '.join(parts) or '-'}  ready {ready}/{total}{tail}"


def render_text(report: StormReport) -> list[str]:
    """The summary a person reads after the progress lines."""
    done = report.all_ready_seconds
    when = f"{done:.2f} s" if done is not None else "NOT ALL READY"
    lines = [f"storm ({report.label}): {len(report.ready)}/{report.nodes} ready; "
             f"all ready after {when}; bytes served {_mib(report.bytes_served)}"]
    lines.append(f"  {'stage':<10} {'nodes':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
                 f"{'max ms':>8} {'retries':>8}")
    for s in report.stages():
        lines.append(f"  {s.stage:<10} {s.count:>6} {_ms(s.p50):>8} {_ms(s.p95):>8} "
                     f"{_ms(s.p99):>8} {_ms(s.max):>8} {s.retries:>8}")
    lines.append(f"  slowest stage (p99): {report.slowest_stage()}")
    if report.head is not None:
        h = report.head
        lines.append(f"  head: cpu {h.cpu_seconds:.2f} s "
                     f"({1000 * h.cpu_seconds / max(1, report.nodes):.2f} ms/node), "
                     f"rss {_mib(h.rss_bytes)} (peak {_mib(h.peak_rss_bytes)})")
    lines.append(f"  simulator: cpu {report.client_cpu_seconds:.2f} s in its workers")
    for error, count in sorted(report.errors().items()):
        lines.append(f"  failed: {count} node(s): {error}")
    return lines
