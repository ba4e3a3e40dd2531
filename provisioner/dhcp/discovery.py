"""Discovery: a DISCOVER from a MAC the inventory does not know becomes a node (state
"discovered"), named from the relay agent's circuit-id (option 82, [dhcp] circuit_names) or
from [dhcp] name_pattern, with an address held for it while it is stored; then it is answered
like any known node (in proxy mode it is stored without an address: the site's server gives
it one). It boots nothing until accepted (`provisioner node accept`, or [dhcp]
auto_accept in a lab): the boot plane gives it a script that waits.

The provisioning network is hostile (compute nodes run users' jobs), so discovery is bounded:
at most [dhcp] discovery_limit discovered nodes exist at once (beyond it an unknown MAC is
neither stored nor answered), and a discovered node not seen again for discovery_ttl seconds is
deleted by `expire`.
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
from provisioner.errors import Conflict, NotFound
from provisioner.inventory.repository import Inventory
from provisioner.limits import OncePer
from provisioner.nodes.model import MacAddress, Node, NodeState

log = logging.getLogger(__name__)
FULL_LOG_EVERY = 60.0  # s: "discovery is full" is logged once a minute at most
RECOUNT_EVERY = 1.0  # s: the discovered nodes are counted from the cache at most this often

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
        self._last_seen: dict[MacAddress, float] = {}
        self._full_log = OncePer(FULL_LOG_EVERY)
        self._count = 0
        self._counted_at: float | None = None

    # -- bounds ----------------------------------------------------------------------------

    def seen(self, mac: MacAddress) -> None:
        """A discovered node sent us a packet: its discovery_ttl starts again."""
        self._last_seen[mac] = self._clock()

    def _discovered(self, now: float) -> int:
        """Discovered nodes stored or being stored. The cache is scanned at most once per
        RECOUNT_EVERY, so that a flood of unknown MACs costs no scan per packet."""
        if self._counted_at is None or now - self._counted_at >= RECOUNT_EVERY:
            self._count = sum(1 for node in self.inventory.cached_nodes()
                              if node.state is NodeState.DISCOVERED)
            self._counted_at = now
        return self._count + len(self._adding)

    def _full(self, mac: MacAddress, now: float) -> bool:
        limit = self.settings.discovery_limit
        if self._discovered(now) < limit:
            return False
        self._counters["discovery_full"] += 1
        if self._full_log.due("full", now):
            log.warning("dhcp: discovery is full (%d discovered nodes, [dhcp] discovery_limit): "
                        "%s not recorded and not answered (%d so far); accept or delete "
                        "discovered nodes", limit, mac, self._counters["discovery_full"])
        return True

    async def expire(self) -> list[Node]:
        """Delete discovered nodes not seen for discovery_ttl seconds. A node this process has
        not seen yet (it was discovered before a restart) gets a whole ttl from now."""
        now, ttl = self._clock(), self.settings.discovery_ttl
        expired: list[Node] = []
        discovered = {n.mac for n in self.inventory.cached_nodes()
                      if n.state is NodeState.DISCOVERED}
        for mac in list(self._last_seen):
            if mac not in discovered:
                del self._last_seen[mac]  # accepted or deleted meanwhile
        for mac in sorted(discovered, key=lambda m: m.value):
            last = self._last_seen.setdefault(mac, now)
            if now - last < ttl:
                continue
            node = await self._delete_discovered(mac)
            self._last_seen.pop(mac, None)
            if node is not None:
                expired.append(node)
        return expired

    async def _delete_discovered(self, mac: MacAddress) -> Node | None:
        try:
            current = (await self.inventory.get_node(mac.value)).value
            if current.state is not NodeState.DISCOVERED:
                return None  # accepted meanwhile
            node = await self.inventory.delete_node(mac.value)
        except (NotFound, Conflict):
            return None  # deleted or changed meanwhile: nothing to expire
        self._counters["discovery_expired"] += 1
        self._count = max(self._count - 1, 0)
        log.info("dhcp: discovered node %s (%s) not accepted and not seen for %d s: deleted",
                 node.name, mac, self.settings.discovery_ttl)
        return node

    # -- a new MAC -------------------------------------------------------------------------

    def discover(self, decision: policy.Discover, subnet: Subnet | None,
                 transport: asyncio.DatagramTransport) -> None:
        """`subnet`: where the node's address comes from; None in proxy mode, where the site's
        server gives addresses and the node is stored without one."""
        mac = decision.mac
        if mac in self._adding:
            return  # a retransmitted DISCOVER while the node is being added
        if self._full(mac, self._clock()):
            return
        ip = None if subnet is None else self.leases.choose(
            mac, subnet.pool, self._clock(), requested=decision.requested_ip)
        name = self._name(decision.packet)
        if self.settings.discovery_dry_run:
            self._counters["discovery_dry_run"] += 1
            log.info("dhcp: discovery (dry run): would add %s as %s with %s, not answering",
                     mac, name or self.settings.name_pattern, ip or "no address")
            return
        if subnet is not None:
            if ip is None:
                self._counters["pool_exhausted"] += 1
                return
            # Held for this MAC while its node is stored, so that a DISCOVER from another
            # unknown MAC meanwhile cannot choose the same address.
            self.leases.offer(mac, subnet.pool, self._clock(), reserved=ip)
        self._adding.add(mac)
        self._in_flight.spawn(self._add(decision, ip, name, transport))

    def _name(self, packet: DhcpPacket) -> str | None:
        circuit = relay_agent_circuit(packet)
        if circuit is not None:
            return self.circuits.get(circuit.decode("ascii", "replace"))
        return None

    async def _add(self, decision: policy.Discover, ip: IPv4Address | None, name: str | None,
                   transport: asyncio.DatagramTransport) -> None:
        # One at a time: two concurrent add_node calls for the same next name can both succeed
        # (Inventory._claim_name takes over a claim whose node is not stored yet).
        async with self._lock:
            await self._add_node(decision, ip, name, transport)

    async def _add_node(self, decision: policy.Discover, ip: IPv4Address | None,
                        name: str | None,
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
                    # Settled: the cache (what discovery_limit counts) has it before it leaves
                    # the set of nodes being added.
                    await self.inventory.settle(await self.inventory.add_node(node))
                except Conflict:
                    if name is not None:
                        raise
                    continue
                self._counters["discovered"] += 1
                self._count += 1  # until the next recount
                self._last_seen[mac] = self._clock()
                log.info("dhcp: discovered %s as %s with %s", mac, node.name,
                         ip or "no address (proxy mode)")
                self._record(mac, "discovered", {"name": node.name,
                                                 "ip": str(ip) if ip else None})
                self._answer(decision, transport, node)
                return
        finally:
            self._adding.discard(mac)
