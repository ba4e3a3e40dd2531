"""End to end with two heads: a 3-member etcd cluster and two appliances on one bridge
(`lab up --heads 2 --store etcd`), QEMU nodes booting from them. The head that answered a node's
DHCP and served its boot script is SIGKILLed while the node downloads its kernel and image (the
kill waits until every node has its script: the fallback starts after it), and the node
fetches the rest from the other head (its iPXE script and /init know both, [ha]
fallback_urls), every node still becomes ready, and each is handed to the scheduler exactly
once (the surviving head leads the once-only work, ha/singletons.py, within the lead's ttl).

The short run (two BIOS nodes) is the CI one; the full run (`full`: four nodes, BIOS and UEFI)
runs with PROVISIONER_FULL=1."""

from __future__ import annotations

import re
import time

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import head_ip
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import snapshot
from tests.support.labs import MakeLab, boot, boot_and_wait, console

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MID_BOOT_TIMEOUT = 180.0  # seconds for the first node to fetch its boot script (TCG)


def script_head(lab: Lab, node: LabNode) -> str | None:
    """The address of the head whose boot plane served `node` its script (iPXE prints the
    URL it chains to), once the node runs it: the script's first line is on the console. (The
    URL alone is printed when the fetch starts; the store's `provisioning` event is written
    before the response has reached the node. A kill between the two leaves the node at "No
    more network devices": the fallback starts at the script.)"""
    text = console(node)
    if f"provisioner: booting {node.qemu.name} " not in text:
        return None
    mac = re.escape(node.qemu.mac)
    found = re.findall(rf"http://([0-9.]+)(?::[0-9]+)?/boot/{mac}\.ipxe", text)
    return found[-1] if found else None


def wait_scripts_served(lab: Lab, nodes: list[LabNode]) -> tuple[LabNode, str]:
    """Once every node has fetched its boot script (kernel and image to come): the node that
    fetched it last and the address of the head that served it. (A node that has its DHCP
    answer but not yet its script has only the one URL DHCP gave it: the kill waits until no
    node is there, as this fallback starts at the script.)"""
    deadline = time.monotonic() + MID_BOOT_TIMEOUT
    while time.monotonic() < deadline:
        views = snapshot(lab, [n.qemu.mac for n in nodes])
        heads = {n.qemu.mac: script_head(lab, n) for n in nodes}
        started = {mac: [e.at for e in view.events if e.kind == "provisioning"]
                   for mac, view in views.items()}
        if all(heads.values()) and all(started.values()):
            last = max(nodes, key=lambda n: max(started[n.qemu.mac]))
            return last, str(heads[last.qemu.mac])
        time.sleep(0.1)
    raise AssertionError("the nodes did not all fetch their boot scripts in time")


def crash_a_head_mid_boot(make_lab: MakeLab, firmwares: list[str]) -> None:
    lab = make_lab(discovery=True, store="etcd", heads=2)
    nodes = [boot(lab, firmware, register=True) for firmware in firmwares]
    victim_node, address = wait_scripts_served(lab, nodes)
    victim = "head1" if address == lab.network.server_ip else "head2"
    killed = lab.kill_head(victim)
    print(f"{victim} ({address}, pid {killed.pid}) killed after it served "
          f"{victim_node.qemu.name} its boot script")
    began = time.monotonic()
    boot_and_wait(lab, nodes)
    print(f"all {len(nodes)} nodes ready {time.monotonic() - began:.0f} s after the kill")

    views = snapshot(lab, [n.qemu.mac for n in nodes])
    survivor = head_ip(lab.network, 2 if victim == "head1" else 1)
    text = console(victim_node)
    # iPXE fell back for a file, or (all fetched before the kill) /init for the callback
    fell_back = [f"trying the {file} from http://{survivor}"
                 for file in ("kernel", "image", "overlay")]
    fell_back.append(f"callback accepted by http://{survivor}")
    used = [line for line in fell_back if line in text]
    assert used, text[-3000:]
    print(f"{victim_node.qemu.name}: {'; '.join(used)}")
    for node in nodes:
        seen = views[node.qemu.mac]
        assert seen.state == "ready", seen.timeline()
        handed = [e for e in seen.events if e.kind == "ready"
                  and e.detail.get("event") == "handed_off"]
        queued = [e for e in seen.events if e.kind == "handoff_queued"]
        booted = [e for e in seen.events if e.kind == "booted"]
        assert len(booted) == 1 and len(handed) == 1, seen.timeline()
        assert len(queued) <= 1, seen.timeline()  # (or noted on `booted`)


def test_nodes_become_ready_when_the_head_that_answered_them_dies(make_lab: MakeLab) -> None:
    crash_a_head_mid_boot(make_lab, ["bios", "bios"])


@pytest.mark.full
def test_nodes_become_ready_when_the_head_that_answered_them_dies_full(
        make_lab: MakeLab) -> None:
    crash_a_head_mid_boot(make_lab, ["bios", "uefi", "bios", "uefi"])
