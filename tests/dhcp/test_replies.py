"""Reply builders (RFC 2131 table 3), option 82 echo (RFC 3046), reply_destination (RFC 2131
section 4.1)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from provisioner.dhcp.bootfile import BootInfo, boot_file
from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import decode, encode
from provisioner.dhcp.replies import (
    INFINITE_LEASE,
    Destination,
    Grant,
    ack_reply,
    inform_reply,
    nak_reply,
    offer_reply,
    proxy_reply,
    reply_destination,
)
from provisioner.dhcp.subnets import relay_agent_circuit, subnet_options
from provisioner.nodes.model import Firmware
from tests.dhcp.test_bootfile import SETTINGS
from tests.dhcp.test_policy import AGENT, NODE_MAC, RELAY, SERVER, ip, packet, req, sid
from tests.dhcp.test_vectors import (
    AAVMF_ARM64,
    IPXE_BIOS,
    MAC,
    OVMF_X64,
    UEFI_HTTP_X64,
    client_wire,
    uuid_option,
    wire,
)

NETWORK = IPv4Network("10.0.0.0/24")
SUBNET = subnet_options(
    NETWORK, routers=[SERVER], dns=[SERVER], domain="cluster", mtu=9000, hostname="node007"
)
GRANT = Grant(ip("10.0.0.5"), 3600, SUBNET)
PXE_BOOT = BootInfo("undionly.kpxe", SERVER)


def test_offer_fields_follow_rfc2131_table3() -> None:
    request = decode(client_wire("udhcpc"))
    offer = offer_reply(request, SERVER, GRANT, PXE_BOOT)
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
    offer = offer_reply(request, SERVER, GRANT)
    assert list(offer.options)[5:] == list(SUBNET)
    assert offer.file == b""
    assert offer.siaddr == ip("0.0.0.0")


def test_infinite_lease_has_no_t1_t2() -> None:
    offer = offer_reply(packet(1), SERVER, Grant(ip("10.0.0.5"), INFINITE_LEASE))
    assert offer.options[51] == b"\xff\xff\xff\xff"
    assert 58 not in offer.options


def test_max_message_size_drops_the_least_wanted_options() -> None:
    big = {**SUBNET, 43: bytes(250), 119: bytes(250)}
    wanted = bytes([1, 3, 43, 119])
    small = packet(1, (55, wanted))  # no 57: 576 bytes, 548 of DHCP
    offer = offer_reply(small, SERVER, Grant(ip("10.0.0.5"), 3600, big))
    assert list(offer.options) == [53, 54, 51, 58, 59, 1, 3, 43]
    assert len(encode(offer)) <= 576 - 28
    roomy = packet(1, (55, wanted), (57, (1500).to_bytes(2, "big")))
    offer = offer_reply(roomy, SERVER, Grant(ip("10.0.0.5"), 3600, big))
    assert list(offer.options)[-2:] == [43, 119]


def test_long_boot_url_goes_in_option_67() -> None:
    url = "http://head/" + "x" * 200
    offer = offer_reply(packet(1), SERVER, GRANT, BootInfo(url, SERVER))
    assert offer.file == b""
    assert offer.options[67] == url.encode()
    assert decode(encode(offer)).options[67] == url.encode()


def test_boot_options_when_requested_and_http_vendor_class() -> None:
    request = decode(wire(UEFI_HTTP_X64, flags=0x8000))
    boot = boot_file(Firmware.UEFI_HTTP, SETTINGS, server=SERVER, mac=NODE_MAC, arch=16)
    offer = offer_reply(request, SERVER, GRANT, boot)
    assert offer.options[60] == b"HTTPClient"
    assert offer.options[67] == b"http://10.0.0.1/boot/ipxe.efi"
    ipxe = offer_reply(decode(wire(IPXE_BIOS)), SERVER, GRANT, PXE_BOOT)
    assert ipxe.options[66] == b"10.0.0.1"
    assert 60 not in ipxe.options  # full mode: plain DHCP boot, no PXE vendor class


def test_ack_copies_ciaddr_and_inform_has_no_lease() -> None:
    renew = packet(3, ciaddr="10.0.0.5")
    ack = ack_reply(renew, SERVER, GRANT)
    assert ack.message_type is MessageType.ACK
    assert ack.ciaddr == ip("10.0.0.5")
    assert ack.yiaddr == ip("10.0.0.5")
    inform = packet(8, (55, b"\x06\x0f"), ciaddr="10.0.0.5")
    reply = inform_reply(inform, SERVER, SUBNET)
    assert reply.yiaddr == ip("0.0.0.0")
    assert reply.ciaddr == ip("10.0.0.5")
    assert list(reply.options) == [53, 54, 6, 15]


def test_nak() -> None:
    request = packet(3, req("10.9.9.9"), (55, b"\x01\x03"))
    nak = nak_reply(request, SERVER, "wrong network")
    assert list(nak.options) == [53, 54, 56]
    assert nak.options[56] == b"wrong network"
    assert nak.yiaddr == nak.ciaddr == nak.siaddr == ip("0.0.0.0")
    assert not nak.broadcast
    relayed = nak_reply(packet(3, req("10.9.9.9"), giaddr=str(RELAY)), SERVER)
    assert relayed.broadcast  # RFC 2131 4.3.2: the relay must broadcast it


def test_proxy_offer_bios_and_uefi() -> None:
    bios = decode(wire([*IPXE_BIOS[:6], (97, uuid_option())]))
    offer = proxy_reply(bios, SERVER, PXE_BOOT, Firmware.BIOS)
    assert offer.message_type is MessageType.OFFER
    assert offer.yiaddr == ip("0.0.0.0")
    assert (offer.siaddr, offer.file) == (SERVER, b"undionly.kpxe")
    assert offer.options[60] == b"PXEClient"
    assert offer.options[43] == b"\x06\x01\x08\xff"
    assert offer.options[97] == uuid_option()
    uefi = decode(wire(OVMF_X64))
    offer = proxy_reply(uefi, SERVER, BootInfo("ipxe.efi", SERVER), Firmware.UEFI)
    assert 43 not in offer.options  # UEFI then asks the boot server on 4011


def test_proxy_ack_on_4011() -> None:
    request = decode(wire([*AAVMF_ARM64[1:], (53, b"\x03")], ciaddr="192.168.1.50"))
    boot = BootInfo("ipxe-arm64.efi", SERVER)
    ack = proxy_reply(request, SERVER, boot, Firmware.UEFI_ARM64)
    assert ack.message_type is MessageType.ACK
    assert ack.ciaddr == ip("192.168.1.50")
    assert ack.yiaddr == ip("0.0.0.0")
    assert ack.file == b"ipxe-arm64.efi"
    assert list(ack.options)[:3] == [53, 54, 60]
    source = (ip("192.168.1.50"), 4011)
    assert reply_destination(request, ack, source=source) == (source[0], 4011, False)


def test_option_82_is_echoed_unchanged_and_last() -> None:
    fields = {"giaddr": str(RELAY)}
    discover = packet(1, (55, b"\x01\x03"), (82, AGENT), **fields)
    request = packet(3, sid(), req("10.0.0.5"), (82, AGENT), **fields)
    replies = [
        offer_reply(discover, SERVER, GRANT, PXE_BOOT),
        ack_reply(request, SERVER, GRANT),
        nak_reply(request, SERVER),
        inform_reply(packet(8, (82, AGENT), ciaddr="10.0.0.5", **fields), SERVER, SUBNET),
        proxy_reply(discover, SERVER, PXE_BOOT, Firmware.BIOS),
    ]
    for reply in replies:
        assert reply.options[82] == AGENT
        assert list(reply.options)[-1] == 82
        assert reply.giaddr == RELAY
        assert decode(encode(reply)).options[82] == AGENT
    assert relay_agent_circuit(discover) == b"eth0/7"
    assert relay_agent_circuit(packet(1)) is None


def test_option_82_survives_a_tight_size_budget() -> None:
    big = {1: bytes(4), 43: bytes(255), 44: bytes(255)}
    discover = packet(1, (55, b"\x01\x2b\x2c"), (82, AGENT), giaddr=str(RELAY))
    offer = offer_reply(discover, SERVER, Grant(ip("10.0.0.5"), 3600, big))
    assert offer.options[82] == AGENT
    assert 44 not in offer.options


# -- reply_destination, RFC 2131 section 4.1 --------------------------------------------------

BCAST = ip("255.255.255.255")
DEST_TABLE: list[tuple[dict[str, object], MessageType, Destination]] = [
    ({"giaddr": "10.2.0.1"}, MessageType.OFFER, Destination(RELAY, 67, False)),
    ({"giaddr": "10.2.0.1", "flags": 0x8000}, MessageType.NAK, Destination(RELAY, 67, False)),
    ({"ciaddr": "10.0.0.5"}, MessageType.ACK, Destination(ip("10.0.0.5"), 68, False)),
    ({"ciaddr": "10.0.0.5"}, MessageType.NAK, Destination(BCAST, 68, False)),
    ({"flags": 0x8000}, MessageType.OFFER, Destination(BCAST, 68, False)),
    ({}, MessageType.NAK, Destination(BCAST, 68, False)),
    ({}, MessageType.OFFER, Destination(ip("10.0.0.5"), 68, True)),  # raw L2 unicast
    ({}, MessageType.ACK, Destination(ip("10.0.0.5"), 68, True)),
]


@pytest.mark.parametrize(("fields", "mtype", "expected"), DEST_TABLE)
def test_reply_destination(
    fields: dict[str, object], mtype: MessageType, expected: Destination
) -> None:
    request = packet(1 if mtype is MessageType.OFFER else 3, req("10.0.0.5"), **fields)
    if mtype is MessageType.OFFER:
        reply = offer_reply(request, SERVER, GRANT)
    elif mtype is MessageType.ACK:
        reply = ack_reply(request, SERVER, GRANT)
    else:
        reply = nak_reply(request, SERVER)
    assert reply_destination(request, reply) == expected


def test_reply_without_address_is_broadcast() -> None:
    request = packet(1, *OVMF_X64[1:])
    reply = proxy_reply(request, SERVER, PXE_BOOT, Firmware.UEFI)
    assert reply_destination(request, reply) == Destination(BCAST, 68, False)
