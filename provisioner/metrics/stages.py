"""Boot stage durations from the node timeline events as they are recorded.

A boot's events come in this order (docs/architecture.md, the boot sequence): `dhcp_offered`,
`dhcp_acked` (dhcp/answers.py), the `provisioning` state (the iPXE script was served,
nodes/lifecycle.py), `overlay_served` (the booted init fetched its overlay: the kernel and
image are loaded, boot/routes.py), the `booted` state (the callback), the `ready` state (the
handoff confirmed). Each event closes the stage that ends with it, observed only when the
node's previous event was the one before it in this order: a lease renewal of a ready node,
a retried script or an operator's state change is not a stage of a boot. iPXE's own DHCP
exchange, after the PXE ROM's, is the dhcp stage again, of the same boot. A script served
with no DHCP exchange of ours before it (proxy mode without a sighting, a static address, a
second appliance answered DHCP) starts the stages after it, without a whole-boot time.

The last event per node is kept in memory, at most MAX_NODES of them (the oldest forgotten
first), and dropped once a boot is ready or fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from provisioner.metrics import registry

MAX_NODES: Final = 65536
#: event kind -> (its index in the order, the stage it closes or None for the first)
ORDER: Final[dict[str, tuple[int, str | None]]] = {
    "dhcp_offered": (0, None), "dhcp_acked": (1, "dhcp"), "provisioning": (2, "script"),
    "overlay_served": (3, "kernel_image"), "booted": (4, "callback"), "ready": (5, "handoff")}
STAGES: Final = ("dhcp", "script", "kernel_image", "callback", "handoff", "ready")
ENDS: Final = frozenset({"ready", "failed"})


@dataclass(slots=True)
class _Progress:
    index: int
    at: float
    started: float
    whole: bool = True  # seen from its first DHCP offer: the whole boot can be timed


class BootStages:
    def __init__(self, max_nodes: int = MAX_NODES) -> None:
        self.max_nodes = max_nodes
        self._nodes: dict[str, _Progress] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def recorded(self, mac: str, kind: str, at: float) -> None:
        """`kind` was recorded on `mac`'s timeline at `at` (seconds)."""
        step = ORDER.get(kind)
        last = self._nodes.get(mac)
        if step is not None:
            self._advance(mac, step, last, at)
        if kind in ENDS:
            self._nodes.pop(mac, None)

    def _advance(self, mac: str, step: tuple[int, str | None], last: _Progress | None,
                 at: float) -> None:
        index, stage = step
        if stage is None:  # an offer starts a boot, or restarts one that went past DHCP
            # iPXE asks DHCP again after the PXE ROM did: the boot started at the first offer
            started = last.started if last is not None and last.index <= 1 else at
            self._remember(mac, _Progress(0, at, started))
            return
        if last is None or last.index != index - 1:
            if stage == "script":  # no DHCP of ours before it: the later stages still count
                self._remember(mac, _Progress(index, at, at, whole=False))
            return
        registry.BOOT_STAGE.labels(stage).observe(max(0.0, at - last.at))
        if stage == "handoff":
            if last.whole:
                registry.BOOT_STAGE.labels("ready").observe(max(0.0, at - last.started))
            return
        self._remember(mac, _Progress(index, at, last.started, last.whole))

    def _remember(self, mac: str, progress: _Progress) -> None:
        self._nodes.pop(mac, None)  # re-inserted last: the dict's order is the age order
        if len(self._nodes) >= self.max_nodes:
            self._nodes.pop(next(iter(self._nodes)))
        self._nodes[mac] = progress


#: the process's one tracker: the events of every plane of this appliance go through it
TRACKER: Final = BootStages()


def recorded(mac: str, kind: str, at: float) -> None:
    TRACKER.recorded(mac, kind, at)
