"""Typed option values: each decoder refuses what its RFC format does not allow."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

import pytest

from provisioner.dhcp import options as o
from provisioner.errors import LocalProtocolError, MalformedPacket
from tests.dhcp.test_vectors import NODE_UUID, uuid_option


def test_names_and_message_types() -> None:
    assert o.Opt.CLIENT_ARCH.value == 93
    assert o.Opt.IPXE_ENCAP.value == 175
    assert o.MESSAGE_TYPES[1] is o.MessageType.DISCOVER
    assert o.MESSAGE_TYPES[8] is o.MessageType.INFORM
    assert o.MESSAGE_TYPES[0] is None
    assert o.MESSAGE_TYPES[19] is None
    assert {o.MessageType.OFFER, o.MessageType.ACK, o.MessageType.NAK} == o.SERVER_TYPES


def test_integers() -> None:
    assert o.decode_u16(o.encode_u16(1472)) == 1472
    assert o.decode_u32(o.encode_u32(86400)) == 86400
    assert o.decode_u8(b"\x07") == 7
    with pytest.raises(MalformedPacket) as caught:
        o.decode_u32(b"\0\0\0", 51)
    assert caught.value.reason == "bad_option51"
    with pytest.raises(LocalProtocolError):
        o.encode_u16(70000)
    with pytest.raises(LocalProtocolError):
        o.encode_u8(-1)


def test_addresses() -> None:
    routers = (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
    assert o.decode_ip_list(o.encode_ip_list(routers)) == routers
    assert o.decode_ip(o.encode_ip(routers[0])) == routers[0]
    for bad in (b"", b"\x0a\0\0\x01\x02"):
        with pytest.raises(MalformedPacket):
            o.decode_ip_list(bad, 3)
    with pytest.raises(LocalProtocolError):
        o.encode_ip_list([])


def test_text() -> None:
    assert o.decode_text(b"cluster.local\0") == "cluster.local"
    assert o.decode_text(b"caf\xe9") == "caf\\xe9"
    assert o.encode_text("node001") == b"node001"
    with pytest.raises(LocalProtocolError):
        o.encode_text("nœud")


def test_user_classes_rfc3004_and_bare() -> None:
    assert o.decode_user_classes(b"\x04iPXE\x03foo") == (b"iPXE", b"foo")
    assert o.decode_user_classes(b"iPXE") == (b"iPXE",)  # iPXE sends it bare
    assert o.decode_parameter_list(b"\x01\x03\x06") == (1, 3, 6)


def test_client_arch_ndi_uuid() -> None:
    assert o.decode_client_arch(b"\x00\x07\x00\x09") == (7, 9)
    assert o.encode_client_arch([11]) == b"\x00\x0b"
    with pytest.raises(MalformedPacket) as caught:
        o.decode_client_arch(b"\x00")
    assert caught.value.reason == "bad_option93"
    ndi = o.decode_client_ndi(b"\x01\x03\x10")
    assert ndi == o.ClientNdi(1, 3, 16)
    assert o.encode_client_ndi(ndi) == b"\x01\x03\x10"
    with pytest.raises(MalformedPacket):
        o.decode_client_ndi(b"\x01\x02")
    assert o.decode_client_uuid(uuid_option()) == NODE_UUID
    assert o.encode_client_uuid(NODE_UUID) == uuid_option()
    for bad in (b"\x01" + bytes(16), bytes(16), bytes(18)):
        with pytest.raises(MalformedPacket) as caught:
            o.decode_client_uuid(bad)
        assert caught.value.reason == "bad_option97"


def test_uuid_uses_smbios_byte_order() -> None:
    """The first three fields arrive little-endian, as dmidecode shows them."""
    raw = b"\0" + bytes.fromhex("44454c4c4200 1035 8052b4c04f4e3232".replace(" ", ""))
    assert o.decode_client_uuid(raw) == uuid.UUID("4c4c4544-0042-3510-8052-b4c04f4e3232")


def test_relay_agent_info() -> None:
    raw = b"\x01\x06eth0/1\x02\x04\xaa\xbb\xcc\xdd\x09\x02zz"
    info = o.decode_relay_agent_info(raw)
    assert info.circuit_id == b"eth0/1"
    assert info.remote_id == b"\xaa\xbb\xcc\xdd"
    assert info.suboptions[-1] == (9, b"zz")
    assert info.raw == raw
    assert o.decode_relay_agent_info(b"\x02\x01x").circuit_id is None


@pytest.mark.parametrize(
    "raw", [b"", b"\x01", b"\x01\x05abc", b"\x01\x00", b"\x02\x00", b"\x01\x01a\x02"]
)
def test_relay_agent_info_garbage(raw: bytes) -> None:
    with pytest.raises(MalformedPacket) as caught:
        o.decode_relay_agent_info(raw)
    assert caught.value.reason == "bad_option82"


def test_vendor_suboptions() -> None:
    raw = o.encode_suboptions({o.PXE_DISCOVERY_CONTROL: b"\x08"})
    assert raw == b"\x06\x01\x08\xff"
    assert o.decode_suboptions(b"\0" + raw + b"junk", 43) == ((6, b"\x08"),)
    with pytest.raises(MalformedPacket):
        o.decode_suboptions(b"\x06\x05\x08", 43)
    with pytest.raises(LocalProtocolError):
        o.encode_suboptions({255: b""})
