"""End to end on the etcd store: two ready nodes are power-cycled through the API (the lab's
QEMU driver), etcd is SIGKILLed a few seconds into their boot and started again 30 s later,
longer than iPXE's DHCP patience. Both nodes become ready again, through lease caching (their
recorded leases are ACKed with no store write) and, where a boot stopped, a stage retry that
power-cycles them again; no address is leased twice and each timeline shows the power cycles.
While etcd is down /healthz answers 503 and a MAC that holds no lease gets no address.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab import procs
from provisioner.lab.lab import Lab
from provisioner.lab.storeview import NodeView, snapshot
from tests.security.intruder import Intruder, NoLease
from tests.support.labs import MakeLab, boot, boot_and_wait

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ETCD_PORT = 2379  # LabOptions' default
OUTAGE = 30.0  # seconds etcd stays down: longer than iPXE's DHCP patience
READY_LIMIT = 900.0  # seconds for both nodes to be ready again (TCG, 2 shared cores)
NEWCOMER = "52:54:00:ee:0f:01"
RETRIES = """
[retries]
dhcp_deadline = 60.0
script_deadline = 60.0
callback_deadline = 420.0
max_retries = 3
backoff = 1.5
interval = 2.0
"""


def admin(lab: Lab, method: str, path: str, body: Any = None) -> Any:
    answer = lab.ns.http(method, f"{lab.state.api_url}/api/v1{path}", body=body,
                         token=lab.state.admin_token, timeout=30)
    assert answer.status == 200, (path, answer)
    return answer.json()


def wait_unhealthy(lab: Lab, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if lab.ns.http("GET", f"{lab.state.api_url}/healthz", timeout=5).status == 503:
            return
        time.sleep(0.5)
    raise AssertionError(f"/healthz did not answer 503 within {limit:.0f} s of etcd's death")


def wait_logged(lab: Lab, text: str, limit: float = 30.0) -> None:
    """Until the appliance's log has `text`: the DHCP server finds the store gone within a
    probe or two (dhcp/server.py PROBE_EVERY), not at the instant etcd dies."""
    proc = lab.state.proc("appliance")
    assert proc is not None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if text in Path(proc.log).read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the appliance did not log {text!r} within {limit:.0f} s")


def wait_ready_again(lab: Lab, macs: list[str], since: float) -> dict[str, NodeView]:
    """Until every node is ready with a callback after `since` (the store is read as the lab
    reads it; a read while it is still catching up is tried again)."""
    deadline = time.monotonic() + READY_LIMIT
    while time.monotonic() < deadline:
        try:
            views = snapshot(lab, macs)
        except Exception:  # the store is still coming back
            time.sleep(2)
            continue
        if all(v.state == "ready" and any(e.kind == "booted" and e.at >= since
                                          for e in v.events) for v in views.values()):
            return views
        time.sleep(2)
    raise AssertionError(f"the nodes were not ready within {READY_LIMIT:.0f} s")


def test_nodes_cycled_into_an_etcd_outage_become_ready(make_lab: MakeLab,
                                                       tmp_path: Path) -> None:
    lab = make_lab(discovery=True, store="etcd", extra=RETRIES)
    etcd = lab.state.proc("etcd")
    assert etcd is not None and procs.alive(etcd)
    assert not (lab.state.root / "appliance" / "store.db").exists()  # etcd, not sqlite
    assert "etcd" in str(lab.ns.http("GET", f"{lab.state.api_url}/healthz").json())
    nodes = [boot(lab, "bios", register=True), boot(lab, "uefi", register=True)]
    macs = [n.qemu.mac for n in nodes]
    boot_and_wait(lab, nodes)
    lab.cli("node", "add", NEWCOMER, "--name", "newcomer")  # known, but never leased
    newcomer = Intruder(lab, NEWCOMER, tmp_path / "newcomer")
    try:
        since = time.time()
        for node in nodes:
            admin(lab, "POST", f"/nodes/{node.qemu.name}/power", {"action": "cycle"})
        time.sleep(4)
        procs.kill(etcd)
        killed = time.monotonic()
        wait_unhealthy(lab)
        wait_logged(lab, "dhcp: the store is unreachable")
        with pytest.raises(NoLease):
            newcomer.lease(attempts=3)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
        lab.start_etcd([ETCD_PORT])
        back = time.monotonic()
        views = wait_ready_again(lab, macs, since)
        ready = time.monotonic()
    finally:
        newcomer.close()
    retries = {mac: [e.detail for e in v.events if e.kind == "power_cycled" and e.at >= since
                     and e.detail.get("by") == "retry"] for mac, v in views.items()}
    print(f"etcd down {back - killed:.1f} s; both nodes ready {ready - back:.1f} s after it "
          f"came back, {time.time() - since:.1f} s after the power cycle; retries: {retries}")

    for view in views.values():
        kinds = [e.kind for e in sorted(view.events, key=lambda e: e.at) if e.at >= since]
        assert kinds[0] == "power_cycled", (view.mac, kinds)  # the operator's, then any retries
        assert "ready" in kinds[kinds.index("booted"):], kinds
    leases = admin(lab, "GET", "/leases")
    leases = leases.get("items", leases) if isinstance(leases, dict) else leases
    bound = {lease["mac"]: lease["ip"] for lease in leases if lease.get("state") == "bound"}
    assert set(macs) <= set(bound), leases
    assert len({bound[m] for m in macs}) == 2  # one address each, never the same twice
    for mac in macs:  # every ACK a node ever got was for the address it holds
        acked = {str(e.detail["ip"]) for e in views[mac].events if e.kind == "dhcp_acked"}
        assert acked == {bound[mac]}, (mac, acked, bound)
    counters = admin(lab, "GET", "/counters")["dhcp"]
    print(f"dhcp counters: {counters}")
    assert counters.get("offer_withheld:store_down", 0) >= 1, counters
