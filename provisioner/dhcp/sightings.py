"""ProxyDHCP sightings: the address each MAC showed us in its PXE exchange, for the boot plane.

In proxy mode the site's DHCP server owns the leases, so the boot plane (boot/binding.py) has
no lease of ours to bind a node's boot files to. What it gets instead is the address the client
itself used with us: the requested address (option 50) of the broadcast REQUEST it sends the
site server (RFC 2131 section 4.3.2: SELECTING or INIT-REBOOT), else its ciaddr (a REQUEST or
INFORM from a client that has its address), else the source address of its unicast to our boot
server port 4011 (PXE spec 2.1 section 2.2.4). This is weaker than a lease: it is what the
client claims, not what a server granted, which the README says.

The table is bounded in size (the oldest sighting is forgotten first) and in age, so a flood of
made-up MACs cannot grow it. Pure: the time is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address
from typing import Final

from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import BOOTREQUEST, DhcpPacket
from provisioner.nodes.model import MacAddress

MAX_SIGHTINGS: Final = 4096  # MACs remembered at most
SIGHTING_TTL: Final = 6 * 3600.0  # seconds a sighting stays good: a boot and its install
_ZERO: Final = IPv4Address(0)


def sighted_address(packet: DhcpPacket, *, pxe_port: bool,
                    source: IPv4Address | None) -> IPv4Address | None:
    """The address a client's REQUEST (or INFORM) shows, or None (see the module docstring)."""
    if packet.op != BOOTREQUEST or packet.message_type not in (MessageType.REQUEST,
                                                                MessageType.INFORM):
        return None
    candidates = [packet.requested_ip if packet.message_type is MessageType.REQUEST
                  and packet.ciaddr == _ZERO else None, packet.ciaddr,
                  source if pxe_port else None]
    return next((ip for ip in candidates if ip is not None and _usable(ip)), None)


def _usable(ip: IPv4Address) -> bool:
    return not (ip.is_unspecified or ip.is_multicast or ip.is_reserved)


class Sightings:
    """MAC -> (address, when seen), bounded by `limit` entries and `ttl` seconds."""

    def __init__(self, *, limit: int = MAX_SIGHTINGS, ttl: float = SIGHTING_TTL) -> None:
        self.limit = limit
        self.ttl = ttl
        self._seen: OrderedDict[MacAddress, tuple[IPv4Address, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def saw(self, mac: MacAddress, ip: IPv4Address, now: float) -> None:
        self._seen.pop(mac, None)
        self._seen[mac] = (ip, now)  # newest last: the oldest is forgotten first
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def address_of(self, mac: MacAddress, now: float) -> IPv4Address | None:
        entry = self._seen.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.ttl:
            del self._seen[mac]
            return None
        return entry[0]

    def shows(self, ip: IPv4Address, now: float) -> bool:
        """Whether some MAC's current sighting is `ip`. A scan: the boot plane asks only when
        its connections not reserved for nodes are all taken."""
        return any(seen == ip and now - at < self.ttl for seen, at in self._seen.values())

    def expire(self, now: float) -> int:
        """Forget sightings older than ttl; the number forgotten."""
        old = [mac for mac, (_, at) in self._seen.items() if now - at >= self.ttl]
        for mac in old:
            del self._seen[mac]
        return len(old)
