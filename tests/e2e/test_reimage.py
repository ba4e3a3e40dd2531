"""End to end: a ready node is reimaged from version 1 to version 2 with `provisioner node
reimage` (drain, set image, power-cycle through the QMP power driver, wait for the callback
of the new version, resume), is ready again, and runs a job the scheduler hands its agent."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from provisioner.lab.lab import Lab, clean_console
from provisioner.lab.observe import console_offset, scheduler_state
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import snapshot
from tests.support.labs import MakeLab, boot, boot_and_wait, build_image, run_job

pytestmark = pytest.mark.e2e


def test_reimage_v1_to_v2_then_run_a_job(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=False)
    node: LabNode = boot(lab, "bios", register=True)
    boot_and_wait(lab, [node])
    version = build_image(lab_images(lab), force=True)
    assert int(version) >= 2

    since, offset = time.time(), console_offset(node)
    result = lab.cli("node", "reimage", node.qemu.name, "--image", f"compute:{version}",
                     "--timeout", "300", timeout=420, check=False)
    assert result.returncode == 0, f"reimage failed:\n{result.stdout}\n{result.stderr}"
    boot_and_wait(lab, [node], since=since, offsets={node.qemu.mac: offset})

    view = snapshot(lab, [node.qemu.mac])[node.qemu.mac]
    fresh = [e for e in view.events if e.at >= since]
    booted = [e for e in fresh if e.kind == "booted"]
    assert booted and str(booted[-1].detail["version"]) == version, view.timeline()
    assert view.state == "ready"
    raw = node.qemu.console.read_bytes()[offset:]
    after = clean_console(raw.decode(errors="replace"))
    assert re.search(rf"/boot/images/compute/{version}/vmlinuz", after), after[-2000:]
    assert scheduler_state(lab, node.qemu.name) == "idle"

    job = run_job(lab, "echo job-ran-on-$(hostname)")
    assert job["state"] == "completed", repr(job)
    assert job["node"] == node.qemu.name
    assert job["exit_code"] == 0
    assert f"job-ran-on-{node.qemu.name}" in job["output"], job


def lab_images(lab: Lab) -> Path:
    from provisioner.config import load_settings
    from provisioner.lab.lab import lab_env

    return load_settings(lab.state.config, env=lab_env()).images_dir
