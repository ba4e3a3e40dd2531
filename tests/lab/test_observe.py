"""How the lab reads a node's progress: stages from events, failures from the console, and a
failed boot reported with its stage, its console log and its timeline."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from provisioner.lab import procs
from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.observe import LabBootError, console_failure, stage_of, wait_ready
from provisioner.lab.storeview import NodeView
from provisioner.nodes.model import BootEvent, MacAddress, Node, NodeState

MAC = "52:54:00:99:00:01"


def view(kinds: list[str], state: NodeState = NodeState.REGISTERED, at: float = 100.0
         ) -> NodeView:
    mac = MacAddress(MAC)
    events = tuple(BootEvent(mac, k, at + i, {"ip": "10.99.0.111"} if k == "dhcp_acked"
                             else {}) for i, k in enumerate(kinds))
    return NodeView(MAC, Node(mac, "node001", state=state), events)


def test_stages_follow_the_events_of_this_boot() -> None:
    assert stage_of(view([]), "-", 0) == "dhcp"
    assert stage_of(view(["dhcp_offered", "dhcp_acked"]), "-", 0) == "boot script"
    assert stage_of(view(["dhcp_acked", "provisioning"]), "-", 0) == "kernel+image"
    booted = ["dhcp_acked", "provisioning", "booted"]
    assert stage_of(view(booted, NodeState.BOOTED), "-", 0) == "handoff"
    assert stage_of(view(booted, NodeState.READY), "-", 0) == "handoff"  # not in the scheduler
    assert stage_of(view(booted, NodeState.READY), "idle", 0) == "ready"
    # A `ready` left from an earlier boot does not count for a reimage that began later.
    assert stage_of(view(booted, NodeState.READY), "idle", since=1000) == "dhcp"
    assert view(["dhcp_acked"]).ip == "10.99.0.111"


@pytest.mark.parametrize(("text", "stage"), [
    ("[ 2.1] Kernel panic - not syncing: VFS: Unable to mount root fs", "kernel"),
    ("provisioner-init: callback failed: 401", "callback"),
    ("provisioner: boot of node001 failed: fetching kernel failed 5 times", "kernel+image"),
    ("\x1b[0mNo more network devices\r\n", "dhcp"),
])
def test_console_lines_that_mean_failure(tmp_path: Path, text: str, stage: str) -> None:
    console = tmp_path / "c.log"
    console.write_text("iPXE 1.0\nnet0: ok\n" + text)
    found = console_failure(console, 0)
    assert found is not None and found.split(":")[0] == stage
    assert console_failure(console, console.stat().st_size) is None  # only after the offset


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_a_dead_node_is_reported_with_its_stage_and_console(tmp_path: Path) -> None:
    lab = Lab.create(LabOptions(tmp_path / "lab", namespace=f"pv-labt-{secrets.token_hex(3)}"),
                     say=print)
    try:
        node = lab.new_node("bios")
        lab.register(node)
        lab.start_node(node)
        assert node.proc is not None
        time.sleep(1)
        procs.kill(node.proc)  # the VM dies before it ever asks for an address
        began = time.monotonic()
        with pytest.raises(LabBootError) as failed:
            wait_ready(lab, [node], say=print, interval=0.2)
        assert time.monotonic() - began < 10
        message = str(failed.value)
        assert failed.value.stage == "dhcp" and "QEMU exited" in message
        assert str(node.qemu.console) in message and "events:" in message
    finally:
        lab.down(say=print)
