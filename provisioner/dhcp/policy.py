"""Pure DHCP decisions: what a packet is, what boots, what to answer and where to send it.

Rules of this file: layer 0, pure (no store, no sockets, no clock; time comes in as `now`).
One packet in, one decision out: `classify()` returns a client message or `Ignore(reason)`,
never raises; `*_reply()` build the answer as a DhcpPacket; `reply_destination()` is RFC 2131
section 4.1. Decisions that need the store (is this MAC known, is this address free, the lease
compare-and-swap) belong to server.py; the helpers it needs for them (`pick_address`) are here.
Each check is a small function, in the style of pixiecore's dhcp.go.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final, NamedTuple

from provisioner.dhcp.options import (
    ARCH_EFI_ARM64,
    ARCH_EFI_BC,
    ARCH_EFI_X86_64,
    ARCH_HTTP_ARM64,
    ARCH_HTTP_X86_64,
    ARCH_X86_BIOS,
    PXE_BOOT_FROM_FILE,
    PXE_DISCOVERY_CONTROL,
    SERVER_TYPES,
    MessageType,
    Opt,
    decode_user_classes,
    encode_ip,
    encode_ip_list,
    encode_suboptions,
    encode_text,
    encode_u16,
)
from provisioner.dhcp.packet import (
    BOOTREPLY,
    BROADCAST_FLAG,
    FIXED_SIZE,
    DhcpPacket,
    encoded_option_size,
    reply_to,
)
from provisioner.errors import LocalProtocolError, MalformedPacket
from provisioner.nodes.model import Firmware, MacAddress

SERVER_PORT: Final = 67
CLIENT_PORT: Final = 68
PXE_PORT: Final = 4011  # PXE spec 2.1 section 2.2.4: boot server discovery
IP_UDP_HEADERS: Final = 28  # option 57 counts the whole IP datagram (RFC 2132 section 9.10)
INFINITE_LEASE: Final = 0xFFFFFFFF  # RFC 2132 section 9.2
_ZERO: Final = IPv4Address(0)
_U32: Final = struct.Struct("!I")
_MESSAGE_TYPE_BYTES: Final = {m: bytes((m,)) for m in MessageType}
_BROADCAST: Final = IPv4Address("255.255.255.255")


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ignore:
    """Drop the packet; `reason` is a stable token for the per-reason drop counter."""

    reason: str


@dataclass(frozen=True, slots=True)
class ForeignServerReply:
    """An OFFER/ACK/NAK from another DHCP server on the segment: log, count, record."""

    packet: DhcpPacket
    server: IPv4Address  # its option 54, else siaddr
    message_type: MessageType


@dataclass(frozen=True, slots=True)
class Discover:
    packet: DhcpPacket
    mac: MacAddress
    requested_ip: IPv4Address | None  # option 50: a hint (RFC 2131 section 4.3.1)


class RequestState(enum.StrEnum):
    """RFC 2131 section 4.3.2: the client state a DHCPREQUEST was sent from."""

    SELECTING = "selecting"  # answers our OFFER: option 54 and 50 set, ciaddr zero
    INIT_REBOOT = "init-reboot"  # verifies a remembered lease: 50 set, no 54, ciaddr zero
    RENEWING = "renewing"  # unicast to us: ciaddr set, no 50, no 54
    REBINDING = "rebinding"  # broadcast: ciaddr set, no 50, no 54


@dataclass(frozen=True, slots=True)
class Request:
    packet: DhcpPacket
    mac: MacAddress
    state: RequestState
    address: IPv4Address  # the address the client wants bound


@dataclass(frozen=True, slots=True)
class Decline:
    """The client found `address` in use (RFC 2131 section 4.3.3): quarantine it."""

    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address


@dataclass(frozen=True, slots=True)
class Release:
    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address  # ciaddr (RFC 2131 section 4.3.4)


@dataclass(frozen=True, slots=True)
class Inform:
    """The client has an address and wants parameters only (RFC 2131 section 4.3.5)."""

    packet: DhcpPacket
    mac: MacAddress
    address: IPv4Address  # ciaddr


@dataclass(frozen=True, slots=True)
class BootServerRequest:
    """A PXE client asking the boot server on port 4011 (PXE spec 2.1 section 2.2.4)."""

    packet: DhcpPacket
    mac: MacAddress


ClientMessage = Discover | Request | Decline | Release | Inform | BootServerRequest
Decision = ClientMessage | ForeignServerReply | Ignore


class Mode(enum.StrEnum):
    FULL = "full"  # authoritative: addresses and boot information
    PROXY = "proxy"  # ProxyDHCP beside a site server: boot information only, PXE clients only


@dataclass(frozen=True, slots=True)
class Segment:
    """What classify needs to know about the segment a packet arrived on."""

    server_ids: frozenset[IPv4Address]  # our addresses, as sent in option 54
    relays: frozenset[IPv4Address] = frozenset()  # giaddr values we accept
    mode: Mode = Mode.FULL


# -- classify -------------------------------------------------------------------------------


def classify(
    packet: DhcpPacket, segment: Segment, *, unicast: bool = False, pxe_port: bool = False
) -> Decision:
    """Decide what `packet` is. `unicast`: it was sent to our own address, not broadcast (tells
    RENEWING from REBINDING); `pxe_port`: it arrived on port 4011. Never raises."""
    if packet.op == BOOTREPLY:
        return _server_reply(packet, segment)
    mtype = packet.message_type
    mac = packet.mac
    if not packet.dhcp or mtype is None:
        return Ignore("bootp")
    if mac is None:
        return Ignore("not_ethernet")  # nodes are keyed by MAC
    if packet.giaddr != _ZERO and packet.giaddr not in segment.relays:
        return Ignore("unknown_relay")
    if mtype in SERVER_TYPES:
        return Ignore("server_message")
    if segment.mode is Mode.PROXY and not is_pxe(packet):
        return Ignore("not_pxe")
    if pxe_port:
        return _boot_server(packet, mac, mtype)
    if segment.mode is Mode.PROXY:
        return _proxy(packet, mac, mtype, segment)
    return _full(packet, mac, mtype, segment, unicast)


def _server_reply(packet: DhcpPacket, segment: Segment) -> Decision:
    mtype = packet.message_type
    if mtype is None or mtype not in SERVER_TYPES:
        return Ignore("bootreply")
    server = packet.server_id
    if server is None:
        server = packet.siaddr
    if server in segment.server_ids:
        return Ignore("own_reply")
    return ForeignServerReply(packet, server, mtype)


def _boot_server(packet: DhcpPacket, mac: MacAddress, mtype: MessageType) -> Decision:
    # PXE spec 2.1 section 2.2.4: DHCPREQUEST (or INFORM) with ciaddr set, sent to port 4011.
    if mtype not in (MessageType.REQUEST, MessageType.INFORM):
        return Ignore("pxe_port_type")
    return BootServerRequest(packet, mac)


def _proxy(packet: DhcpPacket, mac: MacAddress, mtype: MessageType, segment: Segment) -> Decision:
    # A ProxyDHCP server answers DISCOVERs, and REQUESTs naming it; the site server owns the rest.
    if mtype is MessageType.DISCOVER:
        return Discover(packet, mac, None)
    if mtype is MessageType.REQUEST and packet.server_id in segment.server_ids:
        return BootServerRequest(packet, mac)
    return Ignore("proxy_mode")


def _full(
    packet: DhcpPacket, mac: MacAddress, mtype: MessageType, segment: Segment, unicast: bool
) -> Decision:
    if mtype is MessageType.DISCOVER:
        return Discover(packet, mac, packet.requested_ip)
    if mtype is MessageType.REQUEST:
        return _request(packet, mac, segment, unicast)
    if mtype is MessageType.DECLINE:
        return _decline(packet, mac, segment)
    if mtype is MessageType.RELEASE:
        return _release(packet, mac, segment)
    if mtype is MessageType.INFORM:
        return _inform(packet, mac)
    return Ignore("unsupported_type")


def _request(packet: DhcpPacket, mac: MacAddress, segment: Segment, unicast: bool) -> Decision:
    """RFC 2131 section 4.3.2: the state is read from options 54, 50 and ciaddr."""
    server_id, requested, ciaddr = packet.server_id, packet.requested_ip, packet.ciaddr
    if server_id is not None:
        if server_id not in segment.server_ids:
            # The client chose another server's offer: ours can be released now.
            return Ignore("selected_other_server")
        address = requested or (ciaddr if ciaddr != _ZERO else None)
        if address is None:
            return Ignore("request_without_address")
        return Request(packet, mac, RequestState.SELECTING, address)
    if ciaddr != _ZERO:
        # 50 MUST NOT be set here, but a few clients send it anyway: ciaddr is what counts.
        state = RequestState.RENEWING if unicast else RequestState.REBINDING
        return Request(packet, mac, state, ciaddr)
    if requested is not None:
        return Request(packet, mac, RequestState.INIT_REBOOT, requested)
    return Ignore("request_without_address")


def _decline(packet: DhcpPacket, mac: MacAddress, segment: Segment) -> Decision:
    # RFC 2131 table 5: a DECLINE MUST carry 50 and 54.
    if _for_other_server(packet, segment):
        return Ignore("other_server")
    if packet.requested_ip is None:
        return Ignore("decline_without_address")
    return Decline(packet, mac, packet.requested_ip)


def _release(packet: DhcpPacket, mac: MacAddress, segment: Segment) -> Decision:
    # RFC 2131 table 5: a RELEASE carries ciaddr and MUST carry 54.
    if _for_other_server(packet, segment):
        return Ignore("other_server")
    if packet.ciaddr == _ZERO:
        return Ignore("release_without_address")
    return Release(packet, mac, packet.ciaddr)


def _inform(packet: DhcpPacket, mac: MacAddress) -> Decision:
    # RFC 2131 section 4.3.5: the reply goes to ciaddr, so an INFORM without it is unanswerable.
    if packet.ciaddr == _ZERO:
        return Ignore("inform_without_address")
    return Inform(packet, mac, packet.ciaddr)


def _for_other_server(packet: DhcpPacket, segment: Segment) -> bool:
    server_id = packet.server_id
    return server_id is not None and server_id not in segment.server_ids


# -- firmware and boot file -----------------------------------------------------------------


def is_pxe(packet: DhcpPacket) -> bool:
    """PXE spec 2.1 section 2.2: a PXE client sends option 60 "PXEClient..."; UEFI HTTP boot
    (UEFI 2.5 section 24.7) sends "HTTPClient...". iPXE sends "PXEClient" too."""
    vendor = packet.vendor_class
    return vendor is not None and vendor.startswith((b"PXEClient", b"HTTPClient"))


def is_ipxe(packet: DhcpPacket) -> bool:
    """iPXE sends user class "iPXE" (option 77) and its own options encapsulated in 175."""
    if Opt.IPXE_ENCAP in packet.options:
        return True
    user_class = packet.user_class
    return user_class is not None and b"iPXE" in decode_user_classes(user_class)


_ARCH_FIRMWARE: Final[Mapping[int, Firmware]] = {
    ARCH_X86_BIOS: Firmware.BIOS,
    ARCH_EFI_BC: Firmware.UEFI,
    ARCH_EFI_X86_64: Firmware.UEFI,
    ARCH_EFI_ARM64: Firmware.UEFI_ARM64,
    ARCH_HTTP_X86_64: Firmware.UEFI_HTTP,
    ARCH_HTTP_ARM64: Firmware.UEFI_HTTP,
}


def client_arch(packet: DhcpPacket) -> int | None:
    """Option 93's first entry, else the "Arch:NNNNN" field of option 60 (PXE spec 2.1 table
    2-1: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"; UEFI HTTP: "HTTPClient:Arch:xxxxx...")."""
    arch = packet.client_arch
    if arch is not None:
        return arch
    fields = (packet.vendor_class or b"").split(b":")
    if len(fields) >= 3 and fields[1] == b"Arch" and fields[2].isdigit():
        return int(fields[2])
    return None


def classify_firmware(packet: DhcpPacket) -> Firmware:
    """iPXE first (it also sends 93 and 60), then the architecture. IA32 EFI (6) and other
    architectures we have no binary for are UNKNOWN: they get an address but no boot file."""
    if is_ipxe(packet):
        return Firmware.IPXE
    arch = client_arch(packet)
    return Firmware.UNKNOWN if arch is None else _ARCH_FIRMWARE.get(arch, Firmware.UNKNOWN)


@dataclass(frozen=True, slots=True)
class BootSettings:
    """First-stage boot files (names as in Debian's ipxe package, /usr/lib/ipxe) and the HTTP
    boot plane. `http_host` defaults to the server address of the segment."""

    bios_file: str = "undionly.kpxe"
    uefi_x64_file: str = "ipxe.efi"  # or "snponly.efi": uses the firmware's own NIC driver
    uefi_arm64_file: str = "ipxe-arm64.efi"
    http_host: str | None = None
    http_port: int = 80

    def http_base(self, server: IPv4Address) -> str:
        host = self.http_host or str(server)
        return f"http://{host}" if self.http_port == 80 else f"http://{host}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class BootInfo:
    """What a reply tells the firmware to load: `filename` is a TFTP path or an http:// URL."""

    filename: str
    next_server: IPv4Address  # siaddr: the TFTP server (RFC 2131 section 2)
    vendor_class: bytes | None = None  # echoed in option 60 when the firmware needs it


def boot_file(
    firmware: Firmware,
    settings: BootSettings,
    *,
    server: IPv4Address,
    mac: MacAddress,
    arch: int | None = None,
    override: str | None = None,
) -> BootInfo | None:
    """The boot file for a client. `override` (the node's or group's `bootfile` setting) wins,
    except for iPXE: a client already running iPXE always gets its boot script, so a
    chainload can never loop. UNKNOWN firmware gets nothing (address only)."""
    if firmware is Firmware.IPXE:
        return BootInfo(f"{settings.http_base(server)}/boot/{mac}.ipxe", server)
    if firmware is Firmware.UEFI_HTTP:
        # UEFI 2.5 section 24.7.2: the offer must echo option 60 "HTTPClient" and carry a URI.
        name = settings.uefi_arm64_file if arch == ARCH_HTTP_ARM64 else settings.uefi_x64_file
        url = override or f"{settings.http_base(server)}/boot/{name}"
        return BootInfo(url, server, b"HTTPClient")
    if override:
        return BootInfo(override, server)
    tftp_name = {
        Firmware.BIOS: settings.bios_file,
        Firmware.UEFI: settings.uefi_x64_file,
        Firmware.UEFI_ARM64: settings.uefi_arm64_file,
    }.get(firmware)
    return None if tftp_name is None else BootInfo(tftp_name, server)


# -- replies --------------------------------------------------------------------------------


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
    """Encode a subnet's usual parameters once, for `Grant.options`."""
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


# -- address choice -------------------------------------------------------------------------


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
