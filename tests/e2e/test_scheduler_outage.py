"""End to end: the scheduler is down (SIGKILL) when a node boots and its handoff is due, and
comes back 30 s after the node's callback. The node waits in `booted` (the handoff stays in
the durable outbox, retried), then becomes `ready` exactly once, and the scheduler knows it
once."""

from __future__ import annotations

import time

import pytest

from provisioner.lab import procs
from provisioner.lab.lab import Lab
from provisioner.lab.observe import scheduler_state
from provisioner.lab.storeview import NodeView, snapshot
from tests.support.labs import MakeLab, boot

pytestmark = pytest.mark.e2e

OUTAGE = 30.0  # seconds the scheduler stays away after the node's callback
BOOT_TIMEOUT = 240.0


def wait_state(lab: Lab, mac: str, state: str, timeout: float) -> NodeView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = snapshot(lab, [mac])[mac]
        if view.state == state:
            return view
        time.sleep(0.5)
    raise AssertionError(f"{mac} not {state} within {timeout:.0f} s:\n"
                         f"{snapshot(lab, [mac])[mac].timeline()}")


def test_a_node_booted_while_the_scheduler_is_down_is_ready_once_when_it_is_back(
        make_lab: MakeLab) -> None:
    lab = make_lab()
    scheduler = lab.state.proc("scheduler")
    if scheduler is None:
        pytest.skip("this lab runs no scheduler")
    procs.kill(scheduler)
    node = boot(lab, "bios", register=True)
    mac = node.qemu.mac
    booted = wait_state(lab, mac, "booted", BOOT_TIMEOUT)
    time.sleep(OUTAGE)
    waiting = snapshot(lab, [mac])[mac]
    assert waiting.state == "booted", waiting.timeline()  # nobody took it: not ready
    lab.start_scheduler()
    back = time.monotonic()
    ready = wait_state(lab, mac, "ready", 120)
    print(f"ready {time.monotonic() - back:.1f} s after the scheduler came back")
    kinds = ready.event_kinds()
    assert kinds.count("booted") == 1 and kinds.count("ready") == 1, ready.timeline()
    assert booted.node is not None
    assert scheduler_state(lab, booted.node.name) == "idle"
    answer = lab.ns.http("GET", f"{lab.state.scheduler_url}/sched/v1/nodes", timeout=5,
                         token=lab.state.scheduler_token)
    assert answer.status == 200, answer
    listed = answer.json()
    listed = listed.get("items", listed) if isinstance(listed, dict) else listed
    assert [n["name"] for n in listed].count(booted.node.name) == 1, listed
    time.sleep(3)  # a second delivery, if any, would show as a second `ready`
    assert snapshot(lab, [mac])[mac].event_kinds().count("ready") == 1
