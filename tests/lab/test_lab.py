"""The lab without QEMU: namespace, bridge, appliance and scheduler up; `lab status` and
`lab down` from other processes (the CLI), through the state file; down is safe twice."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.errors import ConfigError
from provisioner.lab import procs
from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.netns import LabNetwork, Namespace, namespace_exists

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]


def cli(data: Path, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_DATA_DIR": str(data), "PROVISIONER_LAB_NAMESPACE": namespace}
    return subprocess.run([sys.executable, "-m", "provisioner", "lab", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_lab_services_status_and_down_from_other_processes(tmp_path: Path) -> None:
    namespace = f"pv-labt-{secrets.token_hex(3)}"
    data = tmp_path / "data"
    lab = Lab.create(LabOptions(data / "lab", namespace=namespace), say=print)
    try:
        status = cli(data, namespace, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["namespace"] == namespace and shown["address"] == "10.99.0.1/24"
        assert shown["api_url"] == "http://10.99.0.1:8080"
        assert set(shown["services"]) >= {"appliance", "scheduler"}
        assert all(s["running"] for s in shown["services"].values())
        token = shown["admin_token"]
        # The token is a real admin token: the API answers with it and refuses without.
        nodes = lab.ns.http("GET", f"{shown['api_url']}/api/v1/nodes", token=token)
        assert nodes.status == 200, nodes
        assert lab.ns.http("GET", f"{shown['api_url']}/api/v1/nodes").status == 401
        # The scheduler listens on the bridge, so it has a token too, in a private file.
        jobs = f"{shown['scheduler_url']}/sched/v1/jobs"
        assert lab.ns.http("GET", jobs, token=shown["scheduler_token"]).status == 200
        assert lab.ns.http("GET", jobs).status == 401
        assert (lab.state.config.stat().st_mode & 0o077) == 0
        # Nothing of the lab is reachable from the host's own network namespace.
        assert subprocess.run(["ip", "addr", "show", "br0"], capture_output=True,
                              check=False).stdout.count(b"10.99.0.1") == 0
    finally:
        lab.ns.close()
    appliance = lab.state.proc("appliance")
    assert appliance is not None
    down = cli(data, namespace, "down")
    assert down.returncode == 0, down.stderr
    assert "removed" in down.stdout
    assert not namespace_exists(namespace) and not procs.alive(appliance)
    again = cli(data, namespace, "down")
    assert again.returncode == 0 and "nothing to take down" in again.stdout
    missing = cli(data, namespace, "status")
    assert missing.returncode != 0 and "no lab is up" in missing.stderr


def test_a_second_lab_in_the_same_place_is_refused(tmp_path: Path) -> None:
    namespace = f"pv-labt-{secrets.token_hex(3)}"
    net = LabNetwork(namespace)
    net.create()
    try:
        with pytest.raises(ConfigError, match="lab down"):
            Lab.create(LabOptions(tmp_path / "lab", namespace=namespace), say=print)
    finally:
        net.destroy()
    net.destroy()  # twice is fine
    assert not namespace_exists(namespace)


def test_a_thread_in_the_namespace_sees_the_bridge(tmp_path: Path) -> None:
    net = LabNetwork(f"pv-labt-{secrets.token_hex(3)}")
    net.create()
    try:
        net.add_tap("tap1")
        with Namespace(net.namespace) as ns:
            inside = ns.call(lambda: Path("/proc/thread-self/net/dev").read_text())
        assert "br0" in inside and "tap1" in inside
        assert "tap1" not in Path("/proc/thread-self/net/dev").read_text()
        master = subprocess.run(["ip", "-n", net.namespace, "-o", "link", "show", "tap1"],
                                capture_output=True, text=True, check=False).stdout
        assert "master br0" in master
    finally:
        net.destroy()
