"""The storm's report: percentiles, per-stage summaries, the time until all are ready, and the
text and JSON a reader gets."""

from __future__ import annotations

import math

from provisioner.lab.storm.report import (
    HeadUsage,
    NodeRecord,
    StormReport,
    percentile,
    progress_line,
    render_text,
    summarize_stage,
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def node(mac: str, start: float, stages: dict[str, float], **kwargs: object) -> NodeRecord:
    """A record whose stages follow one another from `start`, each taking the given seconds."""
    record = NodeRecord(mac, "bios", **kwargs)  # type: ignore[arg-type]
    at = start
    for stage, took in stages.items():
        record.spans[stage] = (at, at + took)
        at += took
    return record


def test_a_stage_summary_counts_only_the_nodes_that_went_through_it() -> None:
    records = [node("a", 0, {"dhcp": 0.1, "tftp": 1.0}), node("b", 0, {"dhcp": 0.3}),
               node("c", 0, {"dhcp": 0.2}, retries={"dhcp": 2})]
    dhcp = summarize_stage("dhcp", records)
    assert (dhcp.count, dhcp.p50, dhcp.max, dhcp.retries) == (3, 0.2, 0.3, 2)
    assert summarize_stage("tftp", records).count == 1


def test_all_ready_is_the_last_poll_and_only_when_every_node_made_it() -> None:
    full = {"dhcp": 0.1, "script": 0.1, "overlay": 0.1, "callback": 0.1, "poll": 1.0}
    records = [node("a", 10, full), node("b", 10.5, full)]
    report = StormReport(2, 10.0, records)
    assert report.all_ready_seconds is not None
    assert abs(report.all_ready_seconds - 1.9) < 1e-9
    failed = node("c", 10, {"dhcp": 0.1}, error="script: BootFailed: HTTP 404")
    short = StormReport(3, 10.0, [*records, failed])
    assert short.all_ready_seconds is None
    assert short.errors() == {"script: BootFailed: HTTP 404": 1}
    assert short.slowest_stage() == "poll"


def test_the_text_and_json_carry_every_figure() -> None:
    records = [node(f"m{i}", 0, {"dhcp": 0.01 * i, "image": 0.5, "poll": 0.2},
                    bytes_read=1000) for i in range(1, 11)]
    report = StormReport(10, 0.0, records, HeadUsage(2.0, 50 << 20, 60 << 20), 3.5)
    text = "\n".join(render_text(report))
    assert "10/10 ready" in text and "slowest stage (p99): image" in text
    assert "200.00 ms/node" in text and "rss 50.0 MiB (peak 60.0 MiB)" in text
    assert "cpu 3.50 s in its workers" in text
    data = report.to_dict()
    assert data["ready"] == 10 and data["bytes_served"] == 10_000
    assert [s["stage"] for s in data["stages"]] == ["dhcp", "image", "poll"]
    assert data["stages"][0]["p99"] == 0.1 and data["head"]["cpu_ms_per_node"] == 200.0


def test_a_record_survives_the_trip_between_processes() -> None:
    record = node("52:54:01:00:00:01", 5, {"dhcp": 0.1, "poll": 0.2}, retries={"poll": 1},
                  bytes_read=42)
    assert NodeRecord.from_dict(record.to_dict()) == record


def test_the_progress_line_names_only_busy_stages() -> None:
    line = progress_line(3.25, {"dhcp": 4, "image": 0, "poll": 2, "failed": 1}, 5, 12)
    assert line == "storm:    3.2 s  dhcp 4  poll 2  ready 5/12  failed 1"
