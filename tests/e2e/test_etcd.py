"""End to end on the etcd store: the lab starts a real etcd inside its namespace and the
appliance and the scheduler keep their state there instead of the embedded sqlite file, and an
unknown node is discovered and boots. Marked `full`: CI boots nodes on etcd in
tests/e2e/test_store_outage.py (one etcd, the same checks of the store, then its outage) and
tests/e2e/test_ha.py (a 3-member cluster)."""

from __future__ import annotations

import pytest

from provisioner.lab import procs
from tests.e2e.test_boot import assert_booted_over_http
from tests.support.labs import MakeLab, boot, boot_and_wait

pytestmark = [pytest.mark.e2e, pytest.mark.full]


def test_bios_node_boots_with_the_etcd_store(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=True, store="etcd")
    etcd = lab.state.proc("etcd")
    assert etcd is not None and procs.alive(etcd)
    assert not (lab.state.root / "appliance" / "store.db").exists()
    node = boot(lab, "bios", register=False)
    boot_and_wait(lab, [node])
    seen = assert_booted_over_http(lab, node)
    assert "discovered" in seen.event_kinds()
    health = lab.ns.http("GET", f"{lab.state.api_url}/healthz").json()
    assert "etcd" in str(health), health
