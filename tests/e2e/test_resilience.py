"""End to end: two nodes boot at once, and the appliance is killed (SIGKILL) and restarted while
they are mid-boot. Both still reach `ready` (iPXE retries its fetches, the init script retries
its callback) and no lease or event written before the crash is lost."""

from __future__ import annotations

import time

import pytest

from provisioner.lab import procs
from provisioner.lab.lab import Lab
from provisioner.lab.storeview import snapshot
from tests.support.labs import MakeLab, boot, boot_and_wait

pytestmark = pytest.mark.e2e

MID_BOOT_TIMEOUT = 180.0


def wait_mid_boot(lab: Lab, macs: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Poll until some node has fetched its boot script (kernel and image still to come);
    return every node's events at that moment."""
    deadline = time.monotonic() + MID_BOOT_TIMEOUT
    while time.monotonic() < deadline:
        views = snapshot(lab, macs)
        if any("provisioning" in v.event_kinds() for v in views.values()):
            return {mac: [(e.kind, e.at) for e in v.events] for mac, v in views.items()}
        time.sleep(0.3)
    raise AssertionError("no node fetched its boot script in time")


def test_two_nodes_survive_an_appliance_crash_mid_boot(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=True)
    nodes = [boot(lab, "bios", register=False), boot(lab, "uefi", register=True)]
    macs = [n.qemu.mac for n in nodes]
    before = wait_mid_boot(lab, macs)
    old = lab.state.proc("appliance")
    assert old is not None
    away = lab.restart_appliance(kill=True)
    assert not procs.alive(old)
    new = lab.state.proc("appliance")
    assert new is not None and new.pid != old.pid
    print(f"appliance killed and back in {away:.1f} s")
    boot_and_wait(lab, nodes)

    views = snapshot(lab, macs)
    for mac, events in before.items():
        after = {(e.kind, e.at) for e in views[mac].events}
        lost = [e for e in events if e not in after]
        assert not lost, f"{mac}: events lost across the crash: {lost}"
        assert views[mac].state == "ready"
    answer = lab.ns.http("GET", f"{lab.state.api_url}/api/v1/leases",
                         token=lab.state.admin_token)
    assert answer.status == 200, answer
    leases = answer.json()
    leases = leases.get("items", leases) if isinstance(leases, dict) else leases
    bound = {lease["mac"]: lease["ip"] for lease in leases if lease.get("state") == "bound"}
    assert set(macs) <= set(bound), f"leases: {leases}"
    assert len({bound[m] for m in macs}) == 2  # one address each
    for mac in macs:  # the address each node booted with is the one it still holds
        acked = [e for e in views[mac].events if e.kind == "dhcp_acked"]
        assert {str(e.detail["ip"]) for e in acked} == {bound[mac]}
