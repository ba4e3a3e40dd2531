"""bench/storm.py and its baseline (bench/peers/pxe.py): the baseline serves what the simulated
nodes need (an overlay they can read, a boot file for each firmware), the table says the ratio
and when a side was not all ready, and a small baseline storm runs and cleans up after itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import storm as bench
from bench.peers import pxe
from provisioner.lab.storm.appliance import StormOptions
from provisioner.lab.storm.node import parse_env, unpack_overlay
from provisioner.lab.storm.report import HeadUsage, NodeRecord, StormReport


def test_the_baseline_overlay_is_the_appliances_shape_with_its_own_urls() -> None:
    files = unpack_overlay(pxe.overlay("10.97.0.1"))
    env = parse_env(files["etc/provisioner/node.env"].decode())
    assert env["PROVISIONER_CALLBACK_URL"] == "http://10.97.0.1:8080/node/v1/booted"
    assert env["PROVISIONER_SCHEDULER_URL"] == "http://10.97.0.1:8090"
    assert files["etc/provisioner/token"] and "etc/provisioner/agent" in files


def test_the_pool_and_dnsmasqs_boot_files() -> None:
    assert pxe.pool("10.97.0.1/16", 1000) == ("10.97.0.100", "10.97.8.67")
    argv = pxe.dnsmasq_argv("br0", Path("/w"), "10.97.0.1", "10.97.0.100", "10.97.0.200",
                            tftp_root=Path("/t"))
    assert "--dhcp-boot=tag:ipxe,http://10.97.0.1/boot/script.ipxe" in argv
    assert "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi" in argv and "--no-ping" in argv


def report(label: str, seconds: float | None, cpu: float = 1.0) -> StormReport:
    record = NodeRecord("m", "bios", {"dhcp": (0.0, 0.5), "poll": (0.5, seconds or 1.0)})
    if seconds is None:
        record.error = "poll: BootFailed"
    return StormReport(1, 0.0, [record], HeadUsage(cpu, 1, 1), label=label)


def test_the_table_gives_medians_ratio_and_stages() -> None:
    options = StormOptions(1, image_size=16 << 20)
    row = bench.row(options, [report("p", 2.0), report("p", 4.0), report("p", 3.0)],
                    [report("b", 2.0), report("b", 2.0), report("b", 2.0)])
    assert row[:6] == ["1", "-", "image 16 MiB", "3.00 s", "2.00 s", "1.50"]
    assert row[7] == "poll" and row[8] == "dhcp 500 poll 2500"
    failed = bench.row(options, [report("p", None)], [report("b", 1.0)])
    assert failed[3] == "not all ready" and failed[5] == "-"
    assert bench.markdown([row]).count("\n") == 2


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_a_small_baseline_storm_is_all_ready_and_leaves_nothing(tmp_path: Path) -> None:
    def names() -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return {line.split()[0] for line in out.splitlines() if "storm" in line}

    before = names()
    result = bench.baseline(StormOptions(6, image_size=256 << 10, workers=1, timeout=120),
                            tmp_path / "baseline")
    assert result.all_ready_seconds is not None, result.errors()
    assert {s.stage for s in result.stages()} >= {"dhcp", "tftp", "image", "callback", "poll"}
    assert names() <= before
