"""The answers a server sends, and where they go: OFFER, ACK, NAK, the ACK to an INFORM and the
ProxyDHCP answer, each built as a DhcpPacket from the request (RFC 2131 table 3), and the
destination of a reply (RFC 2131 section 4.1). Pure: no store, no sockets, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final, NamedTuple

from provisioner.dhcp.bootfile import BootInfo
from provisioner.dhcp.options import (
    PXE_BOOT_FROM_FILE,
    PXE_DISCOVERY_CONTROL,
    MessageType,
    Opt,
    encode_suboptions,
)
from provisioner.dhcp.packet import (
    BROADCAST_FLAG,
    FIXED_SIZE,
    DhcpPacket,
    encoded_option_size,
    reply_to,
)
from provisioner.errors import LocalProtocolError
from provisioner.nodes.model import Firmware

SERVER_PORT: Final = 67
CLIENT_PORT: Final = 68
IP_UDP_HEADERS: Final = 28  # option 57 counts the whole IP datagram (RFC 2132 section 9.10)
INFINITE_LEASE: Final = 0xFFFFFFFF  # RFC 2132 section 9.2
_ZERO: Final = IPv4Address(0)
_U32: Final = struct.Struct("!I")
_MESSAGE_TYPE_BYTES: Final = {m: bytes((m,)) for m in MessageType}
_BROADCAST: Final = IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class Grant:
    """An address granted to a client, and the parameters that go with it. `options` are the
    configured values (raw, e.g. from `subnet_options()`); only those the client asks for in
    option 55 are sent, in its order (RFC 2131 section 4.3.1, RFC 2132 section 9.8)."""

    address: IPv4Address
    lease_time: int  # seconds; INFINITE_LEASE for ever
    options: Mapping[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.lease_time <= INFINITE_LEASE:
            raise LocalProtocolError(f"lease time {self.lease_time} is not a 32-bit count")


def offer_reply(
    request: DhcpPacket, server_id: IPv4Address, grant: Grant, boot: BootInfo | None = None
) -> DhcpPacket:
    """DHCPOFFER, RFC 2131 section 4.3.1 and table 3 (ciaddr zero)."""
    first = _header_options(MessageType.OFFER, server_id)
    return _address_reply(request, first, grant, boot, _ZERO)


def ack_reply(
    request: DhcpPacket, server_id: IPv4Address, grant: Grant, boot: BootInfo | None = None
) -> DhcpPacket:
    """DHCPACK to a DHCPREQUEST, RFC 2131 section 4.3.2 and table 3 (ciaddr copied)."""
    first = _header_options(MessageType.ACK, server_id)
    return _address_reply(request, first, grant, boot, request.ciaddr)


def inform_reply(
    request: DhcpPacket,
    server_id: IPv4Address,
    options: Mapping[int, bytes],
    boot: BootInfo | None = None,
) -> DhcpPacket:
    """DHCPACK to a DHCPINFORM: no yiaddr and no lease time (RFC 2131 section 4.3.5)."""
    first = _header_options(MessageType.ACK, server_id) + _boot_options(request, boot)
    opts = _fit(request, first, options)
    return _reply(request, opts, ciaddr=request.ciaddr, boot=boot)


def nak_reply(
    request: DhcpPacket, server_id: IPv4Address, message: str = "address not available"
) -> DhcpPacket:
    """DHCPNAK, RFC 2131 table 3: only 53, 54, 56 (and the echoes). Relayed: the broadcast
    bit is set so that the relay broadcasts it to the client (RFC 2131 section 4.3.2)."""
    first = _header_options(MessageType.NAK, server_id)
    first.append((Opt.MESSAGE, message.encode("ascii", "replace")[:255]))
    flags = request.flags | (BROADCAST_FLAG if request.giaddr != _ZERO else 0)
    return _reply(request, _fit(request, first, {}), flags=flags)


def proxy_reply(
    request: DhcpPacket, server_id: IPv4Address, boot: BootInfo, firmware: Firmware
) -> DhcpPacket:
    """ProxyDHCP answer (PXE spec 2.1 section 2.2.3 / 2.2.4): no address, option 60
    "PXEClient", 54, the client's UUID (97) echoed, siaddr and file. A DISCOVER on port 67 gets
    an OFFER; a REQUEST (on 4011, or on 67 naming us) gets an ACK with ciaddr copied.

    Option 43 with discovery control "boot from this file" goes to legacy BIOS only: as
    pixiecore found, some UEFI firmware ignores such an offer, while all of them treat an offer
    without 43 as "ask the boot server on port 4011", which we answer with an ACK."""
    discover = request.message_type is MessageType.DISCOVER
    first = _header_options(MessageType.OFFER if discover else MessageType.ACK, server_id)
    first.append((Opt.VENDOR_CLASS_ID, boot.vendor_class or b"PXEClient"))
    if discover and firmware is Firmware.BIOS:
        vendor = encode_suboptions({PXE_DISCOVERY_CONTROL: bytes((PXE_BOOT_FROM_FILE,))})
        first.append((Opt.VENDOR_SPECIFIC, vendor))
    if Opt.CLIENT_UUID in request.options:
        first.append((Opt.CLIENT_UUID, request.options[Opt.CLIENT_UUID]))
    first += _boot_options(request, boot)
    ciaddr = _ZERO if discover else request.ciaddr
    return _reply(request, _fit(request, first, {}), ciaddr=ciaddr, boot=boot)


def _address_reply(
    request: DhcpPacket,
    first: list[tuple[int, bytes]],
    grant: Grant,
    boot: BootInfo | None,
    ciaddr: IPv4Address,
) -> DhcpPacket:
    first += _lease_options(grant.lease_time) + _boot_options(request, boot)
    opts = _fit(request, first, grant.options)
    return _reply(request, opts, ciaddr=ciaddr, yiaddr=grant.address, boot=boot)


def _header_options(mtype: MessageType, server_id: IPv4Address) -> list[tuple[int, bytes]]:
    # 53 first: some PXE ROMs only look for the message type at the start of the options.
    return [(53, _MESSAGE_TYPE_BYTES[mtype]), (54, server_id.packed)]


def _lease_options(lease_time: int) -> list[tuple[int, bytes]]:
    """51, and T1/T2 at 0.5 and 0.875 of the lease (RFC 2131 section 4.4.5)."""
    if lease_time == INFINITE_LEASE:
        return [(51, _U32.pack(lease_time))]
    return [
        (51, _U32.pack(lease_time)),
        (58, _U32.pack(lease_time // 2)),
        (59, _U32.pack(lease_time * 7 // 8)),
    ]


def _boot_options(request: DhcpPacket, boot: BootInfo | None) -> list[tuple[int, bytes]]:
    """The file field carries the boot file; option 67 too when asked for, or when the name
    does not fit the 128-byte field (RFC 2132 section 9.5). UEFI HTTP needs 60 echoed."""
    if boot is None:
        return []
    out: list[tuple[int, bytes]] = []
    if boot.vendor_class is not None:
        out.append((60, boot.vendor_class))
    name = boot.filename.encode("ascii", "replace")
    wanted = request.options.get(55, b"")
    if len(name) > 127 or 67 in wanted:
        out.append((67, name))
    if 66 in wanted:
        out.append((66, str(boot.next_server).encode()))
    return out


def _fit(
    request: DhcpPacket, first: list[tuple[int, bytes]], offered: Mapping[int, bytes]
) -> dict[int, bytes]:
    """Assemble the reply options: `first` always, then configured options the client asked
    for, in option 55 order (every configured one when 55 is absent), while they fit in the
    client's option 57 size (RFC 2131 section 2: 576 when absent); then the echoes: 61 (RFC
    6842 section 3, unaltered) and 82, last (RFC 3046 section 2.2)."""
    opts = dict(first)
    given = request.options
    echoes = [(code, given[code]) for code in (61, 82) if code in given]
    budget = request.max_message_size - IP_UDP_HEADERS - FIXED_SIZE
    budget -= _wire_size([*opts.values(), *(value for _, value in echoes)])
    prl = given.get(55)
    for code in offered if prl is None else prl:
        value = offered.get(code)
        if value is None or code in opts:  # also skips a code the client listed twice
            continue
        size = len(value) + 2 if len(value) <= 255 else encoded_option_size(value)
        if size <= budget:
            opts[code] = value
            budget -= size
    opts.update(echoes)
    return opts


def _wire_size(values: list[bytes]) -> int:
    """Bytes the values take as options: 2 per option, 2 more per RFC 3396 fragment."""
    total = sum(map(len, values)) + 2 * len(values)
    if values and max(map(len, values)) > 255:
        total += sum(2 * ((len(value) - 1) // 255) for value in values)
    return total


def _reply(
    request: DhcpPacket,
    options: dict[int, bytes],
    *,
    ciaddr: IPv4Address = _ZERO,
    yiaddr: IPv4Address = _ZERO,
    boot: BootInfo | None = None,
    flags: int | None = None,
) -> DhcpPacket:
    """RFC 2131 table 3: xid, flags, giaddr, htype/hlen/chaddr copied from the request."""
    name = b"" if boot is None else boot.filename.encode("ascii", "replace")
    return reply_to(
        request, options, flags=request.flags if flags is None else flags, ciaddr=ciaddr,
        yiaddr=yiaddr, siaddr=_ZERO if boot is None else boot.next_server,
        file=name if len(name) <= 127 else b"",
    )  # fmt: skip

# -- where the reply goes -------------------------------------------------------------------


class Destination(NamedTuple):
    ip: IPv4Address
    port: int
    raw: bool  # unicast to a client without an address yet: needs an AF_PACKET send to chaddr


def reply_destination(
    request: DhcpPacket,
    reply: DhcpPacket,
    *,
    source: tuple[IPv4Address, int] | None = None,
) -> Destination:
    """RFC 2131 section 4.1, "server behavior" paragraph. `source`: where a port-4011 boot
    server request came from; PXE clients expect the answer there (PXE spec 2.1 2.2.4)."""
    if source is not None:
        return Destination(source[0], source[1], False)
    if request.giaddr != _ZERO:
        return Destination(request.giaddr, SERVER_PORT, False)  # to the relay, port 67
    if reply.message_type is MessageType.NAK:
        return Destination(_BROADCAST, CLIENT_PORT, False)  # NAK: always broadcast
    if request.ciaddr != _ZERO:
        return Destination(request.ciaddr, CLIENT_PORT, False)
    if request.broadcast or reply.yiaddr == _ZERO:
        return Destination(_BROADCAST, CLIENT_PORT, False)
    # The client cannot answer ARP for yiaddr yet: the server must address chaddr directly.
    return Destination(reply.yiaddr, CLIENT_PORT, True)
