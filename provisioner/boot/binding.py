"""Who may fetch a node's boot files: the address that node holds, and nobody else.

The provisioning network is shared with compute nodes running users' jobs, so a MAC in a URL
proves nothing. A node's script, kickstart and overlay (which carries its one-boot token) are
served only to the IPv4 address bound to that MAC: its static address when it has one, else
its current lease when our DHCP server leased it (full and relay mode), else in ProxyDHCP mode
the address it showed us in its PXE exchange (dhcp/sightings.py). Anyone else gets 403.

Refusals are counted in memory and logged once per source address per minute, with the
requester's address: a refusal writes nothing to the store, so a flood of them costs the
appliance no disk and no etcd traffic.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from provisioner.limits import OncePer
from provisioner.metrics import hooks
from provisioner.nodes.model import MacAddress, Node

log = logging.getLogger(__name__)

LOG_EVERY: Final = 60.0  # seconds between two log lines about the same source
MAX_SOURCES: Final = 4096  # sources remembered for log rate-limiting; the oldest are forgotten

AddressOf = Callable[[MacAddress], ipaddress.IPv4Address | None]


def no_lease(mac: MacAddress) -> ipaddress.IPv4Address | None:
    """The lease lookup when our DHCP server is off."""
    return None


@dataclass
class AddressBinding:
    """`leased(mac)` is the address our DHCP server bound to `mac` (or None): its lease, or
    in proxy mode its sighting. A static address comes first: in full mode a reserved node's
    lease is that address anyway, and in proxy mode a sighting is only what the client said."""

    leased: AddressOf = no_lease

    def bound_address(self, node: Node) -> ipaddress.IPv4Address | None:
        return node.ip or self.leased(node.mac)

    def allows(self, node: Node, client: str) -> bool:
        bound = self.bound_address(node)
        return bound is not None and _address(client) == bound


@dataclass
class Refusals:
    """Counts refused boot-plane requests and logs each source at most once per LOG_EVERY."""

    clock: Callable[[], float]
    #: the plane they are counted under in provisioner_refused_total (the callback: "node")
    plane: str = "boot"
    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    _log: OncePer = field(default_factory=lambda: OncePer(LOG_EVERY, limit=MAX_SOURCES))

    def refuse(self, client: str, path: str, reason: str, kind: str = "binding") -> None:
        """`kind`: the reason as a fixed word, for the refusals metric (`reason` names MACs)."""
        self.total += 1
        hooks.refused(self.plane, kind)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if not self._log.due(client, self.clock()):
            return
        log.warning("boot: refused %s to %s: %s (%d refusals so far; next line about this "
                    "source in %d s at the earliest)", path, client, reason, self.total,
                    int(LOG_EVERY))


def _address(client: str) -> ipaddress.IPv4Address | None:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped
    return address
