"""End to end through the CLI a new user runs first: `provisioner lab up --nodes 2 --firmware
mixed` shows both nodes' progress until ready; `lab status --json` and `lab down` follow."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.lab.netns import namespace_exists
from tests.support.labs import CACHE

pytestmark = pytest.mark.e2e


def provisioner(data: Path, namespace: str, *args: str, timeout: float = 600
                ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_DATA_DIR": str(data), "PROVISIONER_LAB_NAMESPACE": namespace,
            "PROVISIONER_IMAGES_CACHE": str(CACHE)}
    return subprocess.run([sys.executable, "-m", "provisioner", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def lab(data: Path, namespace: str, *args: str, timeout: float = 600
        ) -> subprocess.CompletedProcess[str]:
    return provisioner(data, namespace, "lab", *args, timeout=timeout)


def test_lab_up_mixed_firmware_until_ready_then_status_and_down(
        tmp_path: Path, e2e_images: Path) -> None:
    namespace = f"pv-e2e-{secrets.token_hex(3)}"
    data = tmp_path / "data"
    try:
        up = lab(data, namespace, "up", "--nodes", "2", "--firmware", "mixed")
        print(up.stdout, up.stderr)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "all 2 node(s) ready" in up.stdout
        progress = [line for line in up.stdout.splitlines() if line.startswith("  node")]
        for name, firmware in (("node001", "bios"), ("node002", "uefi")):
            mine = [line for line in progress if line.split()[0] == name]
            assert mine and mine[0].split()[1] == firmware
            assert "ready" in mine[-1] and "scheduler=idle" in mine[-1]
        status = lab(data, namespace, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert [(n["name"], n["state"], n["running"]) for n in shown["nodes"]] == [
            ("node001", "ready", True), ("node002", "ready", True)]
        assert shown["admin_token"]
        # The commands a user types next see the lab, with its data dir alone: each ready
        # node with the address of its DHCP lease and the image version it booted.
        listed = provisioner(data, namespace, "node", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        nodes = {n["name"]: n for n in json.loads(listed.stdout)}
        for name in ("node001", "node002"):
            assert nodes[name]["current_ip"].startswith("10.99.0."), nodes[name]
            assert nodes[name]["current_ip_source"] == "lease" and nodes[name]["image_version"]
        jobs = provisioner(data, namespace, "scheduler", "nodes", "--json")
        assert jobs.returncode == 0, jobs.stderr
        assert {n["name"] for n in json.loads(jobs.stdout)} == {"node001", "node002"}
    finally:
        down = lab(data, namespace, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not namespace_exists(namespace)
