"""Watching lab nodes boot: which stage each is in, live progress lines, and a bounded wait
that ends with every node `ready` in the scheduler or with a `LabBootError` naming the node,
the stage that failed, its console log and its event timeline.

Stages, in order, each read from the node's events (since the watch began) and its console:
dhcp -> boot script (iPXE) -> kernel+image -> (services: an image whose init is systemd, from
its /init's init-started to the callback) -> handoff -> ready. A stage that takes
longer than its bound fails; so does a console line that can only mean failure (a kernel panic,
iPXE giving up), a node in state `failed`, or a QEMU process that died.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ProvisionerError
from provisioner.lab import procs
from provisioner.lab.lab import Lab, clean_console, tail
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import NodeView, snapshot

#: seconds a node may spend in each stage before the wait gives up on it (TCG, 2 shared cores)
STAGE_LIMITS = {"dhcp": 150.0, "boot script": 90.0, "kernel+image": 240.0, "callback": 240.0,
                "services": 300.0, "handoff": 120.0}
FAILURES = [
    (re.compile(r"Kernel panic"), "kernel"),
    (re.compile(r"provisioner-init: callback failed"), "callback"),
    (re.compile(r"provisioner: boot of \S+ failed"), "kernel+image"),
    (re.compile(r"No more network devices|No bootable device"), "dhcp"),
]
SCHED_OK = {"idle", "mixed", "allocated"}


class LabBootError(ProvisionerError):
    exit_code = 1

    def __init__(self, node: str, stage: str, reason: str, console: Path, detail: str) -> None:
        self.node, self.stage, self.console = node, stage, console
        super().__init__(f"{node}: stage {stage!r} failed: {reason}; console log {console}\n"
                         f"{detail}")


@dataclass
class BootProgress:
    node: LabNode
    since: float
    stage: str = "dhcp"
    entered: float = 0.0
    state: str = "unknown"
    sched: str = "-"
    view: NodeView | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.view.node.name if self.view and self.view.node else self.node.qemu.name

    def line(self) -> str:
        q = self.node.qemu
        ip = (self.view.ip if self.view else None) or "-"
        return (f"{self.name:<9} {q.firmware:<4} {q.mac} {ip:<12} "
                f"+{time.monotonic() - self.started:6.1f}s  {self.stage:<13} "
                f"store={self.state:<12} "
                f"scheduler={self.sched}")


def stage_of(view: NodeView, sched: str, since: float) -> str:
    kinds = {e.kind for e in view.events if e.at >= since}
    if "booted" in kinds:  # of this boot: a state `ready` from an earlier boot does not count
        return "ready" if view.state == "ready" and sched in SCHED_OK else "handoff"
    if "init_started" in kinds:
        return "services"
    if "provisioning" in kinds:
        return "kernel+image"
    if kinds & {"dhcp_acked", "tftp_served"}:
        return "boot script"
    return "dhcp"


def console_failure(console: Path, offset: int) -> str | None:
    try:
        with console.open("rb") as handle:
            handle.seek(offset)
            text = clean_console(handle.read().decode(errors="replace"))
    except OSError:
        return None
    for pattern, stage in FAILURES:
        match = pattern.search(text)
        if match:
            return f"{stage}:{match.group(0)}"
    return None


def scheduler_state(lab: Lab, name: str) -> str:
    if not lab.state.scheduler_url:
        return "-"
    answer = lab.ns.http("GET", f"{lab.state.scheduler_url}/sched/v1/nodes/{name}", timeout=3,
                         token=lab.state.scheduler_token)
    if answer.status != 200:
        return "-"
    data = answer.json()
    return str(data.get("state", "?")) if isinstance(data, dict) else "?"


def console_offset(node: LabNode) -> int:
    try:
        return node.qemu.console.stat().st_size
    except OSError:
        return 0


def wait_ready(lab: Lab, nodes: Sequence[LabNode], *, since: float | None = None,
               say: Callable[[str], None] = print, interval: float = 1.0,
               need_scheduler: bool = True, offsets: dict[str, int] | None = None,
               ) -> dict[str, BootProgress]:
    """Poll until every node is ready (in the scheduler too, when one runs and
    `need_scheduler`), printing a line whenever a node changes stage or state."""
    began = time.time() if since is None else since
    offsets = offsets if offsets is not None else {n.qemu.mac: 0 for n in nodes}
    progress = {n.qemu.mac: BootProgress(n, began, entered=time.monotonic()) for n in nodes}
    check_sched = need_scheduler and bool(lab.state.proc("scheduler"))
    while True:
        views = snapshot(lab, [n.qemu.mac for n in nodes])
        for mac, p in progress.items():
            _update(lab, p, views[mac], check_sched, say)
            _check(lab, p, offsets.get(mac, 0))
        if all(p.stage == "ready" for p in progress.values()):
            return progress
        time.sleep(interval)


def _update(lab: Lab, p: BootProgress, view: NodeView, check_sched: bool,
            say: Callable[[str], None]) -> None:
    p.view = view
    sched = scheduler_state(lab, view.node.name) if check_sched and view.node else "-"
    stage = stage_of(view, sched if check_sched else "idle", p.since)
    if (stage, view.state, sched) != (p.stage, p.state, p.sched):
        if stage != p.stage:
            p.entered = time.monotonic()
        p.stage, p.state, p.sched = stage, view.state, sched
        say(p.line())


def _check(lab: Lab, p: BootProgress, offset: int) -> None:
    node = p.node
    if p.stage == "ready":
        return
    console = node.qemu.console
    detail = f"console (last lines):\n{tail(console)}\nevents:\n" + (
        p.view.timeline() if p.view else "  (none)")
    services = [proc for proc in lab.state.procs if proc.role in ("appliance", "scheduler")]
    detail += "".join(f"\n{proc.role} log {proc.log} (last lines):\n{tail(proc.log, 12)}"
                      for proc in services)
    if node.proc is not None and not procs.alive(node.proc):
        raise LabBootError(p.name, p.stage, "QEMU exited", console,
                           detail + f"\nqemu log:\n{tail(node.proc.log)}")
    if p.state == "failed":
        reason = next((str(e.detail.get("reason", "")) for e in reversed(p.view.events)
                       if e.kind == "failed"), "") if p.view else ""
        raise LabBootError(p.name, p.stage, f"node state failed ({reason})", console, detail)
    found = console_failure(console, offset)
    if found:
        stage, _, text = found.partition(":")
        raise LabBootError(p.name, stage, f"console shows {text!r}", console, detail)
    limit = STAGE_LIMITS.get(p.stage, 120.0)
    if time.monotonic() - p.entered > limit:
        raise LabBootError(p.name, p.stage, f"no progress for {limit:.0f} s", console, detail)
