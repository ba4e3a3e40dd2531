"""The lab's reads and writes on the appliance's store, run inside the lab namespace (the etcd
backend listens only there): the admin token, and snapshots of the lab nodes and their events.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner.config import load_settings
from provisioner.errors import NotFound, StoreUnavailable
from provisioner.inventory.repository import Inventory
from provisioner.lab.labconfig import lab_env
from provisioner.lab.netns import Namespace
from provisioner.lab.state import LabState
from provisioner.nodes.model import BootEvent, MacAddress, Node
from provisioner.store import open_store


class LabAccess(Protocol):
    """What the store reads need of a lab (lab.Lab has it): its state and a thread inside
    its namespace. A protocol, so that lab.py imports this module and not the reverse."""

    @property
    def state(self) -> LabState: ...

    @property
    def ns(self) -> Namespace: ...


@dataclass(frozen=True)
class NodeView:
    """One node as the store has it now (None when the appliance has not seen it yet)."""

    mac: str
    node: Node | None
    events: tuple[BootEvent, ...] = field(default_factory=tuple)

    @property
    def state(self) -> str:
        return self.node.state.value if self.node is not None else "unknown"

    @property
    def ip(self) -> str | None:
        """The reserved address, else the last one DHCP acknowledged."""
        if self.node is not None and self.node.ip is not None:
            return str(self.node.ip)
        acked = [e for e in self.events if e.kind == "dhcp_acked" and e.detail.get("ip")]
        return str(acked[-1].detail["ip"]) if acked else None

    def event_kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def timeline(self) -> str:
        """The event timeline as text, for progress output and test failures."""
        if not self.events:
            return "  (no events)"
        start = self.events[0].at
        return "\n".join(f"  +{e.at - start:7.2f}s {e.kind:<20} "
                         f"{_short(dict(e.detail))}" for e in self.events)


def _short(detail: dict[str, Any]) -> str:
    text = " ".join(f"{k}={v}" for k, v in detail.items())
    return text if len(text) < 160 else text[:157] + "..."


def create_admin_token(lab: LabAccess) -> str:
    from provisioner.security.tokens import ApiTokens, Role

    async def create() -> str:
        store = open_store(load_settings(lab.state.config, env=lab_env()))
        try:
            _, secret = await ApiTokens(store).create(Role.ADMIN, "lab", time.time())
            return secret
        finally:
            await store.close()

    return lab.ns.run(create)


def snapshot(lab: LabAccess, macs: Sequence[str]) -> dict[str, NodeView]:
    """The nodes of `macs` as the store has them. A read that fails on an etcd member is read
    again from the next one: the client does not retry a failed call, it only sends the next
    one to the next endpoint (store/etcd/connection.py), and a lab test may have killed the
    member every fresh client tries first; a read is safe to repeat."""
    settings = load_settings(lab.state.config, env=lab_env())
    tries = max(1, len(settings.store.endpoints))

    async def read() -> dict[str, NodeView]:
        store = open_store(settings)
        try:
            inventory = Inventory(store)
            for _ in range(tries - 1):
                with contextlib.suppress(StoreUnavailable):  # the next goes to the next member
                    return {mac: await _view(inventory, MacAddress(mac)) for mac in macs}
            return {mac: await _view(inventory, MacAddress(mac)) for mac in macs}
        finally:
            await store.close()

    return lab.ns.run(read, timeout=30)


async def _view(inventory: Inventory, mac: MacAddress) -> NodeView:
    try:
        node: Node | None = (await inventory.get_node(mac.value)).value
    except NotFound:
        node = None
    events = tuple(await inventory.list_events(mac))
    return NodeView(mac.value, node, events)
