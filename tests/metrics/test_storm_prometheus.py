"""A real Prometheus scrapes the appliance of a boot storm (provisioner/lab/storm/) every
second while the storm runs, and what its query API says afterwards matches the storm's own
report: the nodes ready, each boot stage's histogram count, and the bytes served by kind.

Prometheus runs in the lab namespace the storm creates (tests/support/prometheus.py), started
once the appliance answers (it scrapes the bridge address, so with the admin token) and ended
by its PID before the lab goes down. Figures are printed; only counts are asserted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.storm.appliance import KERNEL_SIZE, StormOptions, storm
from provisioner.lab.storm.report import StormReport, render_text
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
NODES = 50
IMAGE_SIZE = 256 << 10
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
WAIT = 60.0  # scrapes come every second; a loaded machine may lag some


def _total(prom: PrometheusServer, expr: str) -> float:
    return prom.value(f"sum({expr})") or 0.0


def _check(prom: PrometheusServer, report: StormReport) -> None:
    """What Prometheus read against what the storm measured (after a last scrape or more)."""
    counts = {s.stage: s.count for s in report.stages()}
    ready = len(report.ready)
    prom.wait_for('provisioner_nodes{state="ready"}', lambda v: v == ready, WAIT)
    # the appliance's stages (metrics/stages.py) against the storm's: iPXE's own DHCP is the
    # dhcp stage again; the overlay closes kernel_image; the handoff comes before the poll
    wanted = {"dhcp": counts["dhcp"] + counts.get("dhcp-ipxe", 0), "script": counts["script"],
              "kernel_image": counts["overlay"], "callback": counts["callback"],
              "handoff": counts["poll"], "ready": counts["poll"]}
    for stage, count in wanted.items():
        prom.wait_for(f'provisioner_boot_stage_seconds_count{{stage="{stage}"}}',
                      lambda v, c=count: v == c, WAIT)  # type: ignore[misc]
    kernel = prom.wait_for('provisioner_http_bytes_total{kind="kernel"}',
                           lambda v: v >= counts["kernel"] * KERNEL_SIZE, WAIT)
    served = _total(prom, "provisioner_http_bytes_total") + _total(
        prom, "provisioner_tftp_bytes_total")
    ipxe = prom.value('provisioner_tftp_bytes_total{kind="ipxe"}') or 0.0
    print(f"prometheus: kernel {kernel:.0f} B, iPXE over TFTP {ipxe:.0f} B, all {served:.0f} B;"
          f" the storm's report: {report.bytes_served} B")
    assert ipxe >= counts["tftp"] * IPXE_EFI.stat().st_size
    assert served >= report.bytes_served  # retried transfers count on the appliance only
    if not report.errors() and not any(r.retries for r in report.records):
        assert kernel == counts["kernel"] * KERNEL_SIZE
        assert served == report.bytes_served


def _watched(tmp_path: Path) -> Callable[[Lab, Callable[[], StormReport]], StormReport]:
    def around(lab: Lab, measure: Callable[[], StormReport]) -> StormReport:
        target = urlsplit(lab.state.api_url).netloc
        with PrometheusServer([target], tmp_path / "prometheus",
                              netns=lab.state.namespace, token=lab.state.admin_token) as prom:
            prom.wait_for(f'up{{instance="{target}"}}', lambda v: v == 1, WAIT)
            report = measure()
            started = time.monotonic()
            _check(prom, report)
            print(f"prometheus caught up {time.monotonic() - started:.1f} s after the storm")
        return report
    return around


def test_prometheus_during_a_storm_agrees_with_its_report(tmp_path: Path) -> None:
    started = time.monotonic()
    report = storm(StormOptions(NODES, image_size=IMAGE_SIZE, workers=2, timeout=240),
                   tmp_path / "storm", say=print, around=_watched(tmp_path))
    print("\n".join(render_text(report)))
    print(f"{NODES} nodes watched by Prometheus in {time.monotonic() - started:.1f} s")
    assert report.all_ready_seconds is not None, report.errors()
    assert len(report.ready) == NODES
