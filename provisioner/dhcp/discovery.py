"""Discovery: a DISCOVER from a MAC the inventory does not know becomes a node (state
"discovered"), named from the relay agent's circuit-id (option 82, [dhcp] circuit_names) or
from [dhcp] name_pattern, with an address held for it while it is stored; then it is answered
like any known node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Address

from provisioner.config import DhcpSettings
from provisioner.dhcp import policy
from provisioner.dhcp.bootfile import classify_firmware
from provisioner.dhcp.counters import Counters
from provisioner.dhcp.inflight import InFlight
from provisioner.dhcp.leases import LeaseBook
from provisioner.dhcp.packet import DhcpPacket
from provisioner.dhcp.subnets import Subnet, relay_agent_circuit
from provisioner.errors import Conflict
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import MacAddress, Node, NodeState

log = logging.getLogger(__name__)

# answer(decision, transport, node): answers the DISCOVER once its node is stored.
Answer = Callable[[policy.Discover, asyncio.DatagramTransport, Node], None]
# record(mac, kind, detail): a boot event for the node.
Record = Callable[[MacAddress, str, dict[str, object]], None]


class Discovery:
    def __init__(self, settings: DhcpSettings, inventory: Inventory, leases: LeaseBook,
                 in_flight: InFlight, counters: Counters, *, clock: Callable[[], float],
                 answer: Answer, record: Record) -> None:
        self.settings = settings
        self.inventory = inventory
        self.leases = leases
        self.circuits = dict(entry.split("=", 1) for entry in settings.circuit_names)
        self._in_flight = in_flight
        self._counters = counters
        self._clock = clock
        self._answer = answer
        self._record = record
        self._adding: set[MacAddress] = set()
        self._lock = asyncio.Lock()

    def discover(self, decision: policy.Discover, subnet: Subnet,
                 transport: asyncio.DatagramTransport) -> None:
        mac = decision.mac
        if mac in self._adding:
            return  # a retransmitted DISCOVER while the node is being added
        ip = self.leases.choose(mac, subnet.pool, self._clock(),
                                requested=decision.requested_ip)
        name = self._name(decision.packet)
        if self.settings.discovery_dry_run:
            self._counters["discovery_dry_run"] += 1
            log.info("dhcp: discovery (dry run): would add %s as %s with %s, not answering",
                     mac, name or self.settings.name_pattern, ip)
            return
        if ip is None:
            self._counters["pool_exhausted"] += 1
            return
        # Held for this MAC while its node is stored, so that a DISCOVER from another unknown
        # MAC meanwhile cannot choose the same address.
        self.leases.offer(mac, subnet.pool, self._clock(), reserved=ip)
        self._adding.add(mac)
        self._in_flight.spawn(self._add(decision, ip, name, transport))

    def _name(self, packet: DhcpPacket) -> str | None:
        circuit = relay_agent_circuit(packet)
        if circuit is not None:
            return self.circuits.get(circuit.decode("ascii", "replace"))
        return None

    async def _add(self, decision: policy.Discover, ip: IPv4Address, name: str | None,
                   transport: asyncio.DatagramTransport) -> None:
        # One at a time: two concurrent add_node calls for the same next name can both succeed
        # (Inventory._claim_name takes over a claim whose node is not stored yet).
        async with self._lock:
            await self._add_node(decision, ip, name, transport)

    async def _add_node(self, decision: policy.Discover, ip: IPv4Address, name: str | None,
                        transport: asyncio.DatagramTransport) -> None:
        mac = decision.mac
        firmware = classify_firmware(decision.packet)
        try:
            for index in range(1, 100_000):
                candidate = name or self.settings.name_pattern.format(index=index)
                if name is None and self.inventory.node_by_name(candidate) is not None:
                    continue
                node = Node(mac, candidate, ip=ip, state=NodeState.DISCOVERED, firmware=firmware)
                try:
                    await self.inventory.add_node(node)
                except Conflict:
                    if name is not None:
                        raise
                    continue
                self._counters["discovered"] += 1
                log.info("dhcp: discovered %s as %s with %s", mac, node.name, ip)
                self._record(mac, "discovered", {"name": node.name, "ip": str(ip)})
                self._answer(decision, transport, node)
                return
        finally:
            self._adding.discard(mac)
