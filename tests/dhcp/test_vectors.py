"""Byte vectors of real clients' DHCPDISCOVERs, built by hand (not by our encoder), and the
properties our decoder must read from them. Other test modules import the vectors from here.

Option sets follow what each client sends (from their sources and captures):
iPXE 1.21 undionly.kpxe, OVMF (EDK2 PxeBcDhcp4), UEFI HTTP boot (EDK2 HttpBootDxe),
an ARM64 UEFI (EDK2 on AAVMF), busybox udhcpc 1.36 and ISC dhclient 4.4.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import decode
from provisioner.nodes.model import Firmware, MacAddress

MAC = bytes.fromhex("525400c0ffee")
NODE_UUID = uuid.UUID("4c4c4544-0042-3510-8052-b4c04f4e3232")
Option = tuple[int, bytes]


def wire(
    options: Sequence[Option],
    *,
    op: int = 1,
    xid: int = 0x1A2B3C4D,
    chaddr: bytes = MAC,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    siaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    htype: int = 1,
    hlen: int = 6,
    sname: bytes = b"",
    file: bytes = b"",
    cookie: bytes = b"\x63\x82\x53\x63",
    end: bool = True,
    pad_to: int = 300,
) -> bytes:
    """Assemble a datagram field by field with struct, independently of packet.encode."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, 0, xid, 0, flags,
        IPv4Address(ciaddr).packed, IPv4Address(yiaddr).packed, IPv4Address(siaddr).packed,
        IPv4Address(giaddr).packed, chaddr, sname, file,
    )  # fmt: skip
    body = b"".join(bytes((code, len(value))) + value for code, value in options)
    data = header + cookie + body + (b"\xff" if end else b"")
    return data.ljust(pad_to, b"\0")


def uuid_option(value: uuid.UUID = NODE_UUID) -> bytes:
    return b"\0" + value.bytes_le


# iPXE's option 175: bus id (177), version (235), then one "feature present" flag per
# protocol (e.g. 0x13 HTTP, 0x27 DNS), as ipxe/src/net/udp/dhcp.c sends them.
IPXE_ENCAP = bytes([
    0xB1, 5, 1, 0x80, 0x86, 0x10, 0x0E, 0xEB, 3, 1, 0, 0, 0x17, 1, 1, 0x22, 1, 1, 0x13, 1, 1,
    0x14, 1, 1, 0x11, 1, 1, 0x27, 1, 1, 0x19, 1, 1, 0x10, 1, 2, 0x21, 1, 1, 0x15, 1, 1,
    0x18, 1, 1, 0x12, 1, 1,
])  # fmt: skip

# Parameter request lists (option 55), in each client's order.
IPXE_PRL = bytes.fromhex("01030607080c0f111a2b3c4243778081828384858687afcb")
OVMF_PRL = bytes.fromhex("0102030405060c0d0f1112161728292a2b3233363a3b3c4243618081828384858687")

IPXE_BIOS: list[Option] = [
    (53, b"\x01"),
    (57, b"\x05\xc0"),
    (93, b"\x00\x00"),
    (94, b"\x01\x02\x01"),
    (60, b"PXEClient:Arch:00000:UNDI:002001"),
    (77, b"iPXE"),
    (55, IPXE_PRL),
    (175, IPXE_ENCAP),
    (61, b"\x01" + MAC),
    (97, uuid_option()),
]

OVMF_X64: list[Option] = [
    (53, b"\x01"),
    (57, b"\x05\xc0"),
    (55, OVMF_PRL),
    (97, uuid_option()),
    (94, b"\x01\x03\x00"),
    (93, b"\x00\x07"),
    (60, b"PXEClient:Arch:00007:UNDI:003000"),
]

UEFI_HTTP_X64: list[Option] = [
    (53, b"\x01"),
    (57, b"\x05\xc0"),
    (55, bytes([1, 3, 6, 15, 43, 60, 67])),
    (97, uuid_option()),
    (94, b"\x01\x03\x00"),
    (93, b"\x00\x10"),
    (60, b"HTTPClient:Arch:00016:UNDI:003000"),
]

AAVMF_ARM64: list[Option] = [
    (53, b"\x01"),
    (57, b"\x05\xc0"),
    (55, bytes([1, 3, 6, 15, 43, 60, 66, 67, 97])),
    (97, uuid_option()),
    (94, b"\x01\x03\x00"),
    (93, b"\x00\x0b"),
    (60, b"PXEClient:Arch:00011:UNDI:003000"),
]

UDHCPC: list[Option] = [
    (53, b"\x01"),
    (61, b"\x01" + MAC),
    (57, b"\x02\x40"),
    (55, bytes([1, 3, 6, 12, 15, 28, 42])),
    (60, b"udhcp 1.36.1"),
]

DHCLIENT: list[Option] = [
    (53, b"\x01"),
    (50, IPv4Address("10.0.0.23").packed),
    (12, b"node007"),
    (55, bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])),
]

#: name -> (options, broadcast flag set by that client, firmware it must classify as)
CLIENTS: dict[str, tuple[list[Option], bool, Firmware]] = {
    "ipxe-bios": (IPXE_BIOS, False, Firmware.IPXE),
    "ovmf-x64": (OVMF_X64, True, Firmware.UEFI),
    "uefi-http-x64": (UEFI_HTTP_X64, True, Firmware.UEFI_HTTP),
    "aavmf-arm64": (AAVMF_ARM64, True, Firmware.UEFI_ARM64),
    "udhcpc": (UDHCPC, False, Firmware.UNKNOWN),
    "dhclient": (DHCLIENT, False, Firmware.UNKNOWN),
}


def client_wire(name: str, **fields: object) -> bytes:
    options, broadcast, _ = CLIENTS[name]
    flags = 0x8000 if broadcast else 0
    return wire(options, flags=flags, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_client_discover_decodes(name: str) -> None:
    options, broadcast, _ = CLIENTS[name]
    packet = decode(client_wire(name))
    assert packet.op == 1
    assert packet.xid == 0x1A2B3C4D
    assert packet.message_type is MessageType.DISCOVER
    assert packet.mac == MacAddress("52:54:00:c0:ff:ee")
    assert packet.broadcast is broadcast
    assert list(packet.options) == [code for code, _ in options]  # wire order kept
    assert dict(packet.options) == dict(options)
    assert packet.ciaddr == IPv4Address(0)
    assert packet.sname == b""
    assert packet.file == b""


def test_ipxe_properties() -> None:
    packet = decode(client_wire("ipxe-bios"))
    assert packet.vendor_class == b"PXEClient:Arch:00000:UNDI:002001"
    assert packet.user_class == b"iPXE"
    assert packet.client_arch == 0
    assert packet.client_id == b"\x01" + MAC
    assert packet.max_message_size == 1472
    assert packet.parameter_requests[-2:] == bytes([175, 203])


def test_dhclient_properties() -> None:
    packet = decode(client_wire("dhclient"))
    assert packet.requested_ip == IPv4Address("10.0.0.23")
    assert packet.server_id is None
    assert packet.max_message_size == 576  # absent: the RFC 2131 minimum
    assert packet.client_arch is None


def test_udhcpc_small_max_message_size_is_floored() -> None:
    assert decode(client_wire("udhcpc")).max_message_size == 576
