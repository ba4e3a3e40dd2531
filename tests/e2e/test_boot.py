"""End to end: QEMU nodes PXE-boot from the appliance and reach `ready` in the scheduler."""

from __future__ import annotations

import re

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.observe import scheduler_state
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import NodeView, snapshot
from tests.support.labs import MakeLab, boot, boot_and_wait, console

pytestmark = pytest.mark.e2e

BOOT_STAGES = ["dhcp_offered", "dhcp_acked", "provisioning", "overlay_served", "booted",
               "ready"]


def view(lab: Lab, node: LabNode) -> NodeView:
    return snapshot(lab, [node.qemu.mac])[node.qemu.mac]


def in_order(kinds: list[str], wanted: list[str]) -> bool:
    """`wanted` appear in `kinds` in this order (others may come between)."""
    it = iter(kinds)
    return all(any(k == w for k in it) for w in wanted)


def assert_booted_over_http(lab: Lab, node: LabNode, version: str = "1") -> NodeView:
    seen = view(lab, node)
    kinds = seen.event_kinds()
    assert in_order(kinds, BOOT_STAGES), f"timeline out of order:\n{seen.timeline()}"
    assert seen.state == "ready"
    booted = [e for e in seen.events if e.kind == "booted"][-1]
    assert str(booted.detail.get("version")) == version
    # The handoff to the scheduler is on the timeline: its own event, or noted on `booted`.
    assert "handoff_queued" in kinds or booted.detail.get("handoff") == "queued", seen.timeline()
    text = console(node)
    for file in ("vmlinuz", "image.cpio.xz"):  # iPXE's progress may stand before the "ok"
        assert re.search(rf"/boot/images/compute/{version}/{re.escape(file)}\.\.\.[ 0-9%]*ok",
                         text), f"{file} not fetched over HTTP:\n{text[-3000:]}"
    assert "provisioner-init: callback accepted" in text
    assert seen.node is not None
    assert scheduler_state(lab, seen.node.name) == "idle"
    return seen


def test_bios_node_unknown_mac_is_discovered_and_reaches_ready(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=True)
    node = boot(lab, "bios", register=False)
    boot_and_wait(lab, [node])
    seen = assert_booted_over_http(lab, node)
    assert "discovered" in seen.event_kinds()
    first_offer = next(e for e in seen.events if e.kind == "dhcp_offered")
    # The ROM is iPXE itself: it is sent straight to its HTTP boot script, no TFTP stage.
    assert first_offer.detail["firmware"] == "ipxe"
    assert "tftp_served" not in seen.event_kinds()
    assert "52%3A54%3A00%3A99%3A00%3A01.ipxe... ok" in console(node)


def test_uefi_node_registered_chainloads_ipxe_over_tftp(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=False)
    node = boot(lab, "uefi", register=True)
    boot_and_wait(lab, [node])
    seen = assert_booted_over_http(lab, node)
    assert "discovered" not in seen.event_kinds()
    assert seen.node is not None and seen.node.name == node.qemu.name
    offers = [e for e in seen.events if e.kind == "dhcp_offered"]
    # OVMF's own PXE client (architecture 7) first, then the iPXE it loaded over TFTP.
    assert offers[0].detail["firmware"] == "uefi"
    assert any(e.detail["firmware"] == "ipxe" for e in offers)
    served = [e for e in seen.events if e.kind == "tftp_served"]
    assert [e.detail["file"] for e in served] == ["ipxe.efi"], seen.timeline()
    assert served[0].detail["bytes"] > 100_000
    assert in_order(seen.event_kinds(), ["dhcp_acked", "tftp_served", "provisioning"])
