"""The timeline: events in time order, time spent in each state."""

from __future__ import annotations

from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.nodes.timeline import timeline

MAC = MacAddress("52:54:00:00:00:01")


def test_timeline_orders_events_and_only_state_changes_have_durations() -> None:
    events = [
        BootEvent(MAC, "booted", 130.0, {"from": "provisioning"}),
        BootEvent(MAC, "dhcp_offered", 100.0, {}),
        BootEvent(MAC, "provisioning", 101.0, {"from": "registered"}),
        BootEvent(MAC, "tftp_served", 100.5, {"file": "undionly.kpxe"}),
    ]
    entries = timeline(events, now=150.0)
    assert [e.event.kind for e in entries] == ["dhcp_offered", "tftp_served", "provisioning",
                                               "booted"]
    assert [e.duration for e in entries] == [None, None, 29.0, 20.0]
    assert [e.state for e in entries] == [None, None, "provisioning", "booted"]
    assert [e.offset for e in entries] == [0.0, 0.5, 1.0, 30.0]
    assert timeline([], 1.0) == []


def test_a_timeline_without_state_changes() -> None:
    """A node power-cycled before it ever changed state: its events, none with a duration."""
    events = [BootEvent(MAC, "power_cycled", 10.0, {"by": "admin"}),
              BootEvent(MAC, "dhcp_acked", 12.0, {})]
    entries = timeline(events, now=20.0)
    assert [(e.event.kind, e.duration, e.state) for e in entries] == [
        ("power_cycled", None, None), ("dhcp_acked", None, None)]


def test_a_timeline_without_state_changes_has_no_durations() -> None:
    events = [BootEvent(MAC, "dhcp_offered", 100.0, {}), BootEvent(MAC, "served", 101.0, {})]
    assert [e.duration for e in timeline(events, now=150.0)] == [None, None]


def test_a_page_of_a_longer_timeline_leaves_its_last_state_open() -> None:
    """A page with more after it passes now=None: its last state goes on past the page."""
    events = [BootEvent(MAC, "provisioning", 101.0, {"from": "registered"}),
              BootEvent(MAC, "booted", 130.0, {"from": "provisioning"})]
    assert [e.duration for e in timeline(events, now=None)] == [29.0, None]


def test_a_step_within_a_state_splits_its_phase() -> None:
    """A systemd image: provisioning lasts until init_started (kernel and image), init_started
    until booted (systemd up to multi-user.target); init_started names no state."""
    events = [
        BootEvent(MAC, "provisioning", 100.0, {"from": "registered"}),
        BootEvent(MAC, "init_started", 140.0, {"from": "provisioning",
                                               "event": "init_started"}),
        BootEvent(MAC, "booted", 162.0, {"from": "provisioning", "event": "callback"}),
    ]
    entries = timeline(events, now=170.0)
    assert [e.duration for e in entries] == [40.0, 22.0, 8.0]
    assert [e.state for e in entries] == ["provisioning", None, "booted"]
