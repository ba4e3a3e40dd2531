"""Subnets and addresses: which subnet a packet belongs to (the relay's giaddr, RFC 2131
section 4.3.1), a subnet's parameters, a free address in its pool, and the relay agent's
option 82 (RFC 3046). Pure: no store, no sockets, no clock; the leases themselves, which need
the store, are leases.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from provisioner.dhcp.options import Opt, encode_ip, encode_ip_list, encode_text, encode_u16
from provisioner.dhcp.packet import DhcpPacket
from provisioner.errors import MalformedPacket
from provisioner.nodes.model import MacAddress

_ZERO: Final = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class Pool:
    """The addresses handed out in a subnet, `first` to `last` inclusive."""

    first: IPv4Address
    last: IPv4Address

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4Address) and self.first <= ip <= self.last


@dataclass(frozen=True, slots=True)
class Subnet:
    """One [[dhcp.subnets]] entry, ready to serve: `relay` is the giaddr its requests carry
    (None: the directly attached network); `options` are encoded once (`subnet_options`)."""

    network: IPv4Network
    pool: Pool
    relay: IPv4Address | None
    options: dict[int, bytes]


def subnet_for(subnets: Sequence[Subnet], packet: DhcpPacket) -> Subnet | None:
    """RFC 2131 section 4.3.1: the relay's giaddr selects the subnet; else the attached one. A
    subnet naming giaddr as its relay wins over one whose network merely contains it."""
    giaddr = packet.giaddr
    if giaddr != _ZERO:
        for subnet in subnets:
            if subnet.relay == giaddr:
                return subnet
    for subnet in subnets:
        if giaddr == _ZERO and subnet.relay is None:
            return subnet
        if giaddr != _ZERO and giaddr in subnet.network:
            return subnet
    return None


def subnet_options(
    network: IPv4Network,
    *,
    routers: Iterable[IPv4Address] = (),
    dns: Iterable[IPv4Address] = (),
    domain: str | None = None,
    mtu: int | None = None,
    ntp: Iterable[IPv4Address] = (),
    hostname: str | None = None,
) -> dict[int, bytes]:
    """Encode a subnet's usual parameters once, for `Subnet.options` and `Grant.options`."""
    out = {Opt.SUBNET_MASK.value: encode_ip(network.netmask)}
    out[Opt.BROADCAST_ADDRESS] = encode_ip(network.broadcast_address)
    lists = ((Opt.ROUTER, tuple(routers)), (Opt.DOMAIN_NAME_SERVER, tuple(dns)),
             (Opt.NTP_SERVERS, tuple(ntp)))  # fmt: skip
    for code, addresses in lists:
        if addresses:
            out[code] = encode_ip_list(addresses)
    if domain:
        out[Opt.DOMAIN_NAME] = encode_text(domain)
    if mtu is not None:
        out[Opt.INTERFACE_MTU] = encode_u16(mtu)
    if hostname:
        out[Opt.HOST_NAME] = encode_text(hostname)
    return out


def pick_address(
    first: IPv4Address,
    last: IPv4Address,
    taken: AbstractSet[IPv4Address],
    *,
    mac: MacAddress,
    requested: IPv4Address | None = None,
) -> IPv4Address | None:
    """A free address in [first, last] for a new binding, or None when the pool is full.
    RFC 2131 section 4.3.1: the requested address if it is valid and free; else a new one.
    The search starts at a point hashed from the MAC (as dnsmasq does), so a client tends to
    get the same address back and concurrent head nodes seldom race for the same one."""
    low, high = int(first), int(last)
    if requested is not None and low <= int(requested) <= high and requested not in taken:
        return requested
    size = high - low + 1
    if size <= 0:
        return None
    start = _fnv1a(mac.packed) % size
    for step in range(size):
        candidate = IPv4Address(low + (start + step) % size)
        if candidate not in taken:
            return candidate
    return None


def _fnv1a(data: bytes) -> int:
    """FNV-1a, 32 bits: stable across processes, unlike hash() on bytes."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def relay_agent_circuit(packet: DhcpPacket) -> bytes | None:
    """Option 82 circuit-id for discovery naming; None when absent (decode already refused
    garbage, so this only fails on packets built by hand)."""
    try:
        info = packet.relay_agent_info
    except MalformedPacket:
        return None
    return None if info is None else info.circuit_id


def relay_info_trusted(packet: DhcpPacket, trusted: AbstractSet[IPv4Address]) -> bool:
    """Whether the packet's option 82 may be believed: only when a relay we trust put it there.

    RFC 3046 section 2.1: "Relay agents receiving a DHCP packet from an untrusted circuit with
    giaddr set to zero (indicating that they are the first-hop router) but with a Relay Agent
    Information option already present in the packet SHALL discard the packet and increment an
    error count." A client on our own segment (giaddr 0) has no relay that could have added the
    option, so it wrote it itself; and section 5 (Security Considerations) leaves the trust in
    the option to the relays that add it, so any relay we do not know could have forwarded a
    client's forgery. As Kea does, only the relays listed in the config are believed (the
    subnets' `relay` and [dhcp] trusted_relays); the option of any other packet is dropped
    before anything reads it (circuit names, the echo of RFC 3046 section 2.2)."""
    return packet.giaddr != _ZERO and packet.giaddr in trusted


def without_relay_info(packet: DhcpPacket) -> DhcpPacket:
    """The packet as if it had come without option 82."""
    options = {code: value for code, value in packet.options.items()
               if code != Opt.RELAY_AGENT_INFO}
    return replace(packet, options=options)
