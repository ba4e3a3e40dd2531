"""Storms through the real appliance in a lab namespace: simulated nodes with real DHCP, TFTP
and HTTP clients, each from its own leased address, until the scheduler agent's first poll.

The short runs are what CI runs; the full sizes (1,000 nodes with files, 10,000 control-only)
are marked `full`. Figures are printed, never asserted against a clock: only counts and
generous bounds.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab.storm.appliance import KERNEL_SIZE, StormOptions, storm
from provisioner.lab.storm.report import StormReport, render_text
from tests.support.cli import Cli

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("pv-storm-")}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Every namespace a storm makes is gone after it (its processes went by PID before)."""
    before = namespaces()
    yield
    assert namespaces() <= before


def run(tmp_path: Path, options: StormOptions) -> StormReport:
    report = storm(options, tmp_path / "storm", say=print)
    print("\n".join(render_text(report)))
    return report


def test_every_node_of_a_small_storm_is_ready_through_every_stage(
        tmp_path: Path, no_leftovers: None) -> None:
    report = run(tmp_path, StormOptions(24, image_size=1 << 20, workers=2, timeout=240))
    assert report.all_ready_seconds is not None, report.errors()
    counts = {s.stage: s.count for s in report.stages()}
    uefi = sum(r.arch == "uefi" for r in report.records)
    assert uefi == 12
    for stage in ("dhcp", "script", "kernel", "image", "overlay", "callback", "poll"):
        assert counts[stage] == 24, stage
    assert counts["tftp"] == counts["dhcp-ipxe"] == uefi
    for record in report.records:  # stages in boot order, none overlapping
        spans = list(record.spans.values())
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), record
    files = 24 * (KERNEL_SIZE + (1 << 20)) + uefi * IPXE_EFI.stat().st_size
    assert files <= report.bytes_served < files + 24 * (1 << 20)  # + scripts and overlays
    assert report.head is not None and report.head.cpu_seconds > 0
    assert report.client_cpu_seconds > 0


def test_with_packet_loss_every_node_is_still_ready(tmp_path: Path, no_leftovers: None) -> None:
    # BIOS nodes only: a lock-step TFTP read under loss waits a second per lost block, half a
    # minute for the iPXE binary at 2 %; bench/storm.py --loss measures that side
    report = run(tmp_path, StormOptions(8, loss=2.0, image_size=256 << 10, workers=1,
                                        uefi_share=0.0, timeout=240))
    assert report.all_ready_seconds is not None, report.errors()
    assert report.settings["loss"] == 2.0


def test_the_cli_prints_the_summary_and_exits_0(tmp_path: Path, no_leftovers: None) -> None:
    out = Cli(tmp_path)("lab", "storm", "--nodes", "20", "--image-size", "512k",
                        "--workers", "2")
    assert "storm (provisioner): 20/20 ready; all ready after" in out
    assert "slowest stage (p99):" in out and "head: cpu" in out
    assert "storm: " in out.splitlines()[0]  # progress first, then the summary


@pytest.mark.full
def test_a_thousand_nodes_with_files(tmp_path: Path, no_leftovers: None) -> None:
    report = run(tmp_path, StormOptions(1000, image_size=16 << 20, timeout=1800))
    assert report.all_ready_seconds is not None, report.errors()


@pytest.mark.full
def test_ten_thousand_nodes_control_only(tmp_path: Path, no_leftovers: None) -> None:
    report = run(tmp_path, StormOptions(10000, control_only=True, timeout=1800))
    assert report.all_ready_seconds is not None, report.errors()
