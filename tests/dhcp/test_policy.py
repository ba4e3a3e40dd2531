"""Pure decisions: classify (RFC 2131 section 4.3), firmware and boot file, reply builders,
reply_destination (RFC 2131 section 4.1), option 82 echo (RFC 3046), address choice."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

import pytest

from provisioner.dhcp import policy as p
from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import DhcpPacket, decode, encode
from provisioner.nodes.model import Firmware, MacAddress
from tests.dhcp.test_vectors import (
    AAVMF_ARM64,
    CLIENTS,
    IPXE_BIOS,
    MAC,
    OVMF_X64,
    UDHCPC,
    UEFI_HTTP_X64,
    Option,
    client_wire,
    uuid_option,
    wire,
)

SERVER = IPv4Address("10.0.0.1")
OTHER = IPv4Address("10.0.0.254")
RELAY = IPv4Address("10.2.0.1")
NODE_MAC = MacAddress.from_bytes(MAC)
SEGMENT = p.Segment(server_ids=frozenset({SERVER}), relays=frozenset({RELAY}))
PROXY = p.Segment(server_ids=frozenset({SERVER}), mode=p.Mode.PROXY)
AGENT = b"\x01\x06eth0/7\x02\x06" + MAC


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def packet(mtype: int, *extra: Option, **fields: object) -> DhcpPacket:
    return decode(wire([(53, bytes((mtype,))), *extra], **fields))  # type: ignore[arg-type]


def sid(address: IPv4Address = SERVER) -> Option:
    return (54, address.packed)


def req(address: str) -> Option:
    return (50, ip(address).packed)


# -- classify -------------------------------------------------------------------------------


REQUEST_TABLE: list[tuple[DhcpPacket, bool, p.RequestState, str]] = [
    (packet(3, sid(), req("10.0.0.5")), False, p.RequestState.SELECTING, "10.0.0.5"),
    (packet(3, req("10.0.0.6")), False, p.RequestState.INIT_REBOOT, "10.0.0.6"),
    (packet(3, ciaddr="10.0.0.7"), True, p.RequestState.RENEWING, "10.0.0.7"),
    (packet(3, ciaddr="10.0.0.7"), False, p.RequestState.REBINDING, "10.0.0.7"),
    # 50 MUST NOT be sent with ciaddr, but is by some clients: ciaddr wins.
    (packet(3, req("10.0.0.9"), ciaddr="10.0.0.8"), True, p.RequestState.RENEWING, "10.0.0.8"),
]


@pytest.mark.parametrize(("pkt", "unicast", "state", "address"), REQUEST_TABLE)
def test_request_states(
    pkt: DhcpPacket, unicast: bool, state: p.RequestState, address: str
) -> None:
    decision = p.classify(pkt, SEGMENT, unicast=unicast)
    assert decision == p.Request(pkt, NODE_MAC, state, ip(address))


IGNORE_TABLE: list[tuple[DhcpPacket, p.Segment, str]] = [
    (packet(3, sid(OTHER), req("10.0.0.5")), SEGMENT, "selected_other_server"),
    (packet(3, sid()), SEGMENT, "request_without_address"),
    (packet(3), SEGMENT, "request_without_address"),
    (packet(1, giaddr="10.9.9.9"), SEGMENT, "unknown_relay"),
    (packet(2), SEGMENT, "server_message"),  # OFFER from a client port
    (packet(5), SEGMENT, "server_message"),
    (packet(6), SEGMENT, "server_message"),
    (packet(4, sid(OTHER), req("10.0.0.5")), SEGMENT, "other_server"),
    (packet(4, sid()), SEGMENT, "decline_without_address"),
    (packet(7, sid(OTHER), ciaddr="10.0.0.5"), SEGMENT, "other_server"),
    (packet(7, sid()), SEGMENT, "release_without_address"),
    (packet(8), SEGMENT, "inform_without_address"),
    (packet(10), SEGMENT, "unsupported_type"),  # LEASEQUERY
    (decode(wire([], cookie=b"\0\0\0\0", end=False)), SEGMENT, "bootp"),
    (packet(1, htype=6), SEGMENT, "not_ethernet"),
    (packet(1, op=2), SEGMENT, "bootreply"),
    (packet(2, sid(), op=2), SEGMENT, "own_reply"),
    (packet(1), PROXY, "not_pxe"),
    (decode(wire(UDHCPC)), PROXY, "not_pxe"),
]


@pytest.mark.parametrize(("pkt", "segment", "reason"), IGNORE_TABLE)
def test_ignored(pkt: DhcpPacket, segment: p.Segment, reason: str) -> None:
    assert p.classify(pkt, segment) == p.Ignore(reason)


def test_discover_decline_release_inform() -> None:
    discover = packet(1, req("10.0.0.23"))
    assert p.classify(discover, SEGMENT) == p.Discover(discover, NODE_MAC, ip("10.0.0.23"))
    decline = packet(4, sid(), req("10.0.0.5"))
    assert p.classify(decline, SEGMENT) == p.Decline(decline, NODE_MAC, ip("10.0.0.5"))
    release = packet(7, sid(), ciaddr="10.0.0.5")
    assert p.classify(release, SEGMENT) == p.Release(release, NODE_MAC, ip("10.0.0.5"))
    inform = packet(8, ciaddr="10.0.0.5")
    assert p.classify(inform, SEGMENT) == p.Inform(inform, NODE_MAC, ip("10.0.0.5"))


def test_relayed_request_from_a_known_relay_is_served() -> None:
    discover = packet(1, giaddr=str(RELAY))
    assert isinstance(p.classify(discover, SEGMENT), p.Discover)


@pytest.mark.parametrize("mtype", [MessageType.OFFER, MessageType.ACK, MessageType.NAK])
def test_foreign_server_reply(mtype: MessageType) -> None:
    reply = packet(mtype, sid(OTHER), op=2)
    assert p.classify(reply, SEGMENT) == p.ForeignServerReply(reply, OTHER, mtype)
    without_54 = packet(mtype, op=2, siaddr="10.0.0.99")
    decision = p.classify(without_54, SEGMENT)
    assert isinstance(decision, p.ForeignServerReply)
    assert decision.server == ip("10.0.0.99")


def test_proxy_mode() -> None:
    discover = decode(client_wire("ovmf-x64"))
    assert p.classify(discover, PROXY) == p.Discover(discover, NODE_MAC, None)
    to_us = decode(wire([*OVMF_X64[1:], (53, b"\x03"), sid(), req("192.168.1.50")]))
    assert p.classify(to_us, PROXY) == p.BootServerRequest(to_us, NODE_MAC)
    to_site = decode(wire([*OVMF_X64[1:], (53, b"\x03"), sid(OTHER), req("192.168.1.50")]))
    assert p.classify(to_site, PROXY) == p.Ignore("proxy_mode")


def test_pxe_port_4011() -> None:
    boot = decode(wire([*OVMF_X64[1:], (53, b"\x03")], ciaddr="192.168.1.50"))
    assert p.classify(boot, PROXY, pxe_port=True) == p.BootServerRequest(boot, NODE_MAC)
    assert p.classify(boot, SEGMENT, pxe_port=True) == p.BootServerRequest(boot, NODE_MAC)
    discover = decode(client_wire("ovmf-x64"))
    assert p.classify(discover, PROXY, pxe_port=True) == p.Ignore("pxe_port_type")


# -- firmware and boot file -----------------------------------------------------------------


def with_options(*options: Option) -> DhcpPacket:
    return decode(wire([(53, b"\x01"), *options]))


FIRMWARE_TABLE: list[tuple[Sequence[Option], Firmware]] = [
    ([(93, b"\x00\x00")], Firmware.BIOS),
    ([(93, b"\x00\x06")], Firmware.UNKNOWN),  # IA32 EFI: no binary configured for it
    ([(93, b"\x00\x07")], Firmware.UEFI),
    ([(93, b"\x00\x09")], Firmware.UEFI),
    ([(93, b"\x00\x0b")], Firmware.UEFI_ARM64),
    ([(93, b"\x00\x10")], Firmware.UEFI_HTTP),
    ([(93, b"\x00\x13")], Firmware.UEFI_HTTP),
    ([(93, b"\x00\x02")], Firmware.UNKNOWN),  # Itanium
    ([(93, b"\x00")], Firmware.UNKNOWN),  # malformed 93, no 60
    ([(60, b"PXEClient:Arch:00000:UNDI:002001")], Firmware.BIOS),
    ([(60, b"PXEClient:Arch:00009:UNDI:003016")], Firmware.UEFI),
    ([(60, b"HTTPClient:Arch:00016:UNDI:003000")], Firmware.UEFI_HTTP),
    ([(60, b"PXEClient")], Firmware.UNKNOWN),
    ([(60, b"PXEClient:Arch:xyz")], Firmware.UNKNOWN),
    ([(93, b"\x00\x07"), (60, b"PXEClient:Arch:00000")], Firmware.UEFI),  # 93 wins
    ([(93, b"\x00\x00"), (77, b"iPXE")], Firmware.IPXE),
    ([(93, b"\x00\x07"), (77, b"\x04iPXE")], Firmware.IPXE),  # RFC 3004 form
    ([(93, b"\x00\x09"), (175, b"\xb1\x05\x01\x80\x86\x10\x0e")], Firmware.IPXE),
    ([(77, b"iPXEish")], Firmware.UNKNOWN),
    ([], Firmware.UNKNOWN),
]


@pytest.mark.parametrize(("options", "firmware"), FIRMWARE_TABLE)
def test_classify_firmware(options: Sequence[Option], firmware: Firmware) -> None:
    assert p.classify_firmware(with_options(*options)) == firmware


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_clients_firmware(name: str) -> None:
    assert p.classify_firmware(decode(client_wire(name))) == CLIENTS[name][2]


def test_is_pxe() -> None:
    assert p.is_pxe(decode(wire(IPXE_BIOS)))
    assert p.is_pxe(decode(wire(UEFI_HTTP_X64)))
    assert not p.is_pxe(decode(wire(UDHCPC)))


SETTINGS = p.BootSettings()
BOOT_TABLE: list[tuple[Firmware, int | None, str | None, str | None, bytes | None]] = [
    (Firmware.BIOS, 0, None, "undionly.kpxe", None),
    (Firmware.UEFI, 7, None, "ipxe.efi", None),
    (Firmware.UEFI_ARM64, 11, None, "ipxe-arm64.efi", None),
    (Firmware.UEFI_HTTP, 16, None, "http://10.0.0.1/boot/ipxe.efi", b"HTTPClient"),
    (Firmware.UEFI_HTTP, 19, None, "http://10.0.0.1/boot/ipxe-arm64.efi", b"HTTPClient"),
    (Firmware.IPXE, 0, None, "http://10.0.0.1/boot/52:54:00:c0:ff:ee.ipxe", None),
    (Firmware.UNKNOWN, None, None, None, None),
    (Firmware.BIOS, 0, "pxelinux.0", "pxelinux.0", None),  # per-node/group override wins
    (Firmware.UEFI, 9, "snponly.efi", "snponly.efi", None),
    (Firmware.UNKNOWN, None, "custom.efi", "custom.efi", None),
    (Firmware.UEFI_HTTP, 16, "http://x/y.efi", "http://x/y.efi", b"HTTPClient"),
    # Never loop: an iPXE client gets its script even when the first stage is overridden.
    (Firmware.IPXE, 0, "undionly.kpxe", "http://10.0.0.1/boot/52:54:00:c0:ff:ee.ipxe", None),
]


@pytest.mark.parametrize(("firmware", "arch", "override", "name", "vendor"), BOOT_TABLE)
def test_boot_file(
    firmware: Firmware,
    arch: int | None,
    override: str | None,
    name: str | None,
    vendor: bytes | None,
) -> None:
    boot = p.boot_file(
        firmware, SETTINGS, server=SERVER, mac=NODE_MAC, arch=arch, override=override
    )
    if name is None:
        assert boot is None
    else:
        assert boot == p.BootInfo(name, SERVER, vendor)


def test_boot_settings_are_configurable() -> None:
    settings = p.BootSettings(uefi_x64_file="snponly.efi", http_host="head", http_port=8080)
    boot = p.boot_file(Firmware.UEFI, settings, server=SERVER, mac=NODE_MAC)
    assert boot is not None
    assert boot.filename == "snponly.efi"
    script = p.boot_file(Firmware.IPXE, settings, server=SERVER, mac=NODE_MAC)
    assert script is not None
    assert script.filename == "http://head:8080/boot/52:54:00:c0:ff:ee.ipxe"


# -- replies --------------------------------------------------------------------------------

NETWORK = IPv4Network("10.0.0.0/24")
SUBNET = p.subnet_options(
    NETWORK, routers=[SERVER], dns=[SERVER], domain="cluster", mtu=9000, hostname="node007"
)
GRANT = p.Grant(ip("10.0.0.5"), 3600, SUBNET)
PXE_BOOT = p.BootInfo("undionly.kpxe", SERVER)


def test_subnet_options() -> None:
    assert SUBNET[1] == bytes([255, 255, 255, 0])
    assert SUBNET[28] == bytes([10, 0, 0, 255])
    assert SUBNET[3] == SERVER.packed
    assert SUBNET[15] == b"cluster"
    assert SUBNET[26] == b"\x23\x28"
    assert 42 not in SUBNET


def test_offer_fields_follow_rfc2131_table3() -> None:
    request = decode(client_wire("udhcpc"))
    offer = p.offer_reply(request, SERVER, GRANT, PXE_BOOT)
    assert (offer.op, offer.xid, offer.chaddr, offer.flags) == (2, request.xid, request.chaddr, 0)
    assert offer.yiaddr == ip("10.0.0.5")
    assert offer.ciaddr == ip("0.0.0.0")
    assert offer.siaddr == SERVER
    assert offer.file == b"undionly.kpxe"
    assert offer.message_type is MessageType.OFFER
    # 53, 54, lease and T1/T2, then 55 order (1, 3, 6, 12, 15, 28; 42 not configured), then 61.
    assert list(offer.options) == [53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 28, 61]
    assert offer.options[58] == (1800).to_bytes(4, "big")
    assert offer.options[59] == (3150).to_bytes(4, "big")
    assert offer.options[61] == b"\x01" + MAC  # RFC 6842
    assert 26 not in offer.options  # configured but not requested
    assert decode(encode(offer)) == offer


def test_without_option_55_every_configured_option_is_sent() -> None:
    request = packet(1)
    offer = p.offer_reply(request, SERVER, GRANT)
    assert list(offer.options)[5:] == list(SUBNET)
    assert offer.file == b""
    assert offer.siaddr == ip("0.0.0.0")


def test_infinite_lease_has_no_t1_t2() -> None:
    offer = p.offer_reply(packet(1), SERVER, p.Grant(ip("10.0.0.5"), p.INFINITE_LEASE))
    assert offer.options[51] == b"\xff\xff\xff\xff"
    assert 58 not in offer.options


def test_max_message_size_drops_the_least_wanted_options() -> None:
    big = {**SUBNET, 43: bytes(250), 119: bytes(250)}
    wanted = bytes([1, 3, 43, 119])
    small = packet(1, (55, wanted))  # no 57: 576 bytes, 548 of DHCP
    offer = p.offer_reply(small, SERVER, p.Grant(ip("10.0.0.5"), 3600, big))
    assert list(offer.options) == [53, 54, 51, 58, 59, 1, 3, 43]
    assert len(encode(offer)) <= 576 - 28
    roomy = packet(1, (55, wanted), (57, (1500).to_bytes(2, "big")))
    offer = p.offer_reply(roomy, SERVER, p.Grant(ip("10.0.0.5"), 3600, big))
    assert list(offer.options)[-2:] == [43, 119]


def test_long_boot_url_goes_in_option_67() -> None:
    url = "http://head/" + "x" * 200
    offer = p.offer_reply(packet(1), SERVER, GRANT, p.BootInfo(url, SERVER))
    assert offer.file == b""
    assert offer.options[67] == url.encode()
    assert decode(encode(offer)).options[67] == url.encode()


def test_boot_options_when_requested_and_http_vendor_class() -> None:
    request = decode(wire(UEFI_HTTP_X64, flags=0x8000))
    boot = p.boot_file(Firmware.UEFI_HTTP, SETTINGS, server=SERVER, mac=NODE_MAC, arch=16)
    offer = p.offer_reply(request, SERVER, GRANT, boot)
    assert offer.options[60] == b"HTTPClient"
    assert offer.options[67] == b"http://10.0.0.1/boot/ipxe.efi"
    ipxe = p.offer_reply(decode(wire(IPXE_BIOS)), SERVER, GRANT, PXE_BOOT)
    assert ipxe.options[66] == b"10.0.0.1"
    assert 60 not in ipxe.options  # full mode: plain DHCP boot, no PXE vendor class


def test_ack_copies_ciaddr_and_inform_has_no_lease() -> None:
    renew = packet(3, ciaddr="10.0.0.5")
    ack = p.ack_reply(renew, SERVER, GRANT)
    assert ack.message_type is MessageType.ACK
    assert ack.ciaddr == ip("10.0.0.5")
    assert ack.yiaddr == ip("10.0.0.5")
    inform = packet(8, (55, b"\x06\x0f"), ciaddr="10.0.0.5")
    reply = p.inform_reply(inform, SERVER, SUBNET)
    assert reply.yiaddr == ip("0.0.0.0")
    assert reply.ciaddr == ip("10.0.0.5")
    assert list(reply.options) == [53, 54, 6, 15]


def test_nak() -> None:
    request = packet(3, req("10.9.9.9"), (55, b"\x01\x03"))
    nak = p.nak_reply(request, SERVER, "wrong network")
    assert list(nak.options) == [53, 54, 56]
    assert nak.options[56] == b"wrong network"
    assert nak.yiaddr == nak.ciaddr == nak.siaddr == ip("0.0.0.0")
    assert not nak.broadcast
    relayed = p.nak_reply(packet(3, req("10.9.9.9"), giaddr=str(RELAY)), SERVER)
    assert relayed.broadcast  # RFC 2131 4.3.2: the relay must broadcast it


def test_proxy_offer_bios_and_uefi() -> None:
    bios = decode(wire([*IPXE_BIOS[:6], (97, uuid_option())]))
    offer = p.proxy_reply(bios, SERVER, PXE_BOOT, Firmware.BIOS)
    assert offer.message_type is MessageType.OFFER
    assert offer.yiaddr == ip("0.0.0.0")
    assert (offer.siaddr, offer.file) == (SERVER, b"undionly.kpxe")
    assert offer.options[60] == b"PXEClient"
    assert offer.options[43] == b"\x06\x01\x08\xff"
    assert offer.options[97] == uuid_option()
    uefi = decode(wire(OVMF_X64))
    offer = p.proxy_reply(uefi, SERVER, p.BootInfo("ipxe.efi", SERVER), Firmware.UEFI)
    assert 43 not in offer.options  # UEFI then asks the boot server on 4011


def test_proxy_ack_on_4011() -> None:
    request = decode(wire([*AAVMF_ARM64[1:], (53, b"\x03")], ciaddr="192.168.1.50"))
    boot = p.BootInfo("ipxe-arm64.efi", SERVER)
    ack = p.proxy_reply(request, SERVER, boot, Firmware.UEFI_ARM64)
    assert ack.message_type is MessageType.ACK
    assert ack.ciaddr == ip("192.168.1.50")
    assert ack.yiaddr == ip("0.0.0.0")
    assert ack.file == b"ipxe-arm64.efi"
    assert list(ack.options)[:3] == [53, 54, 60]
    source = (ip("192.168.1.50"), 4011)
    assert p.reply_destination(request, ack, source=source) == (source[0], 4011, False)


def test_option_82_is_echoed_unchanged_and_last() -> None:
    fields = {"giaddr": str(RELAY)}
    discover = packet(1, (55, b"\x01\x03"), (82, AGENT), **fields)
    request = packet(3, sid(), req("10.0.0.5"), (82, AGENT), **fields)
    replies = [
        p.offer_reply(discover, SERVER, GRANT, PXE_BOOT),
        p.ack_reply(request, SERVER, GRANT),
        p.nak_reply(request, SERVER),
        p.inform_reply(packet(8, (82, AGENT), ciaddr="10.0.0.5", **fields), SERVER, SUBNET),
        p.proxy_reply(discover, SERVER, PXE_BOOT, Firmware.BIOS),
    ]
    for reply in replies:
        assert reply.options[82] == AGENT
        assert list(reply.options)[-1] == 82
        assert reply.giaddr == RELAY
        assert decode(encode(reply)).options[82] == AGENT
    assert p.relay_agent_circuit(discover) == b"eth0/7"
    assert p.relay_agent_circuit(packet(1)) is None


def test_option_82_survives_a_tight_size_budget() -> None:
    big = {1: bytes(4), 43: bytes(255), 44: bytes(255)}
    discover = packet(1, (55, b"\x01\x2b\x2c"), (82, AGENT), giaddr=str(RELAY))
    offer = p.offer_reply(discover, SERVER, p.Grant(ip("10.0.0.5"), 3600, big))
    assert offer.options[82] == AGENT
    assert 44 not in offer.options


# -- reply_destination, RFC 2131 section 4.1 --------------------------------------------------

BCAST = ip("255.255.255.255")
DEST_TABLE: list[tuple[dict[str, object], MessageType, p.Destination]] = [
    ({"giaddr": "10.2.0.1"}, MessageType.OFFER, p.Destination(RELAY, 67, False)),
    ({"giaddr": "10.2.0.1", "flags": 0x8000}, MessageType.NAK, p.Destination(RELAY, 67, False)),
    ({"ciaddr": "10.0.0.5"}, MessageType.ACK, p.Destination(ip("10.0.0.5"), 68, False)),
    ({"ciaddr": "10.0.0.5"}, MessageType.NAK, p.Destination(BCAST, 68, False)),
    ({"flags": 0x8000}, MessageType.OFFER, p.Destination(BCAST, 68, False)),
    ({}, MessageType.NAK, p.Destination(BCAST, 68, False)),
    ({}, MessageType.OFFER, p.Destination(ip("10.0.0.5"), 68, True)),  # raw L2 unicast
    ({}, MessageType.ACK, p.Destination(ip("10.0.0.5"), 68, True)),
]


@pytest.mark.parametrize(("fields", "mtype", "expected"), DEST_TABLE)
def test_reply_destination(
    fields: dict[str, object], mtype: MessageType, expected: p.Destination
) -> None:
    request = packet(1 if mtype is MessageType.OFFER else 3, req("10.0.0.5"), **fields)
    if mtype is MessageType.OFFER:
        reply = p.offer_reply(request, SERVER, GRANT)
    elif mtype is MessageType.ACK:
        reply = p.ack_reply(request, SERVER, GRANT)
    else:
        reply = p.nak_reply(request, SERVER)
    assert p.reply_destination(request, reply) == expected


def test_reply_without_address_is_broadcast() -> None:
    request = packet(1, *OVMF_X64[1:])
    reply = p.proxy_reply(request, SERVER, PXE_BOOT, Firmware.UEFI)
    assert p.reply_destination(request, reply) == p.Destination(BCAST, 68, False)


# -- pick_address ---------------------------------------------------------------------------


def test_pick_address() -> None:
    first, last = ip("10.0.0.10"), ip("10.0.0.19")
    taken = {ip("10.0.0.12")}
    assert p.pick_address(first, last, taken, mac=NODE_MAC, requested=ip("10.0.0.11")) == ip(
        "10.0.0.11"
    )
    chosen = p.pick_address(first, last, taken, mac=NODE_MAC, requested=ip("10.0.0.12"))
    assert chosen is not None
    assert first <= chosen <= last
    assert chosen not in taken
    assert p.pick_address(first, last, set(), mac=NODE_MAC) == p.pick_address(
        first, last, set(), mac=NODE_MAC
    )  # stable for a MAC
    outside = p.pick_address(first, last, set(), mac=NODE_MAC, requested=ip("10.0.1.1"))
    assert outside is not None
    assert outside != ip("10.0.1.1")


def test_pick_address_fills_the_pool_then_says_none() -> None:
    first, last = ip("10.0.0.10"), ip("10.0.0.13")
    taken: set[IPv4Address] = set()
    for _ in range(4):
        chosen = p.pick_address(first, last, taken, mac=NODE_MAC)
        assert chosen is not None
        taken.add(chosen)
    assert taken == {ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12"), ip("10.0.0.13")}
    assert p.pick_address(first, last, taken, mac=NODE_MAC) is None
    assert p.pick_address(last, first, set(), mac=NODE_MAC) is None
