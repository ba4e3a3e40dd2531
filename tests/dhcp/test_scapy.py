"""Cross-checks with scapy, an independent DHCP implementation: we decode what scapy builds,
scapy decodes what we build, and scapy crafts some of the malformed packets."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from provisioner.dhcp import policy as p
from provisioner.dhcp.bootfile import BootInfo, FirstStageFiles, boot_file, classify_firmware
from provisioner.dhcp.options import MessageType
from provisioner.dhcp.packet import decode, encode
from provisioner.dhcp.replies import Grant, nak_reply, offer_reply, proxy_reply
from provisioner.dhcp.subnets import subnet_options
from provisioner.errors import MalformedPacket
from provisioner.nodes.model import Firmware, MacAddress
from tests.dhcp.test_vectors import CLIENTS, MAC, NODE_UUID

scapy_dhcp = pytest.importorskip("scapy.layers.dhcp")
BOOTP: Any = scapy_dhcp.BOOTP
DHCP: Any = scapy_dhcp.DHCP

SERVER = IPv4Address("10.0.0.1")
RELAY = IPv4Address("10.2.0.1")
AGENT = b"\x01\x04sw12\x02\x02p7"


def scapy_request(options: list[Any], **fields: Any) -> bytes:
    layer = BOOTP(op=1, xid=0xCAFE, chaddr=MAC, **fields) / DHCP(options=[*options, "end"])
    data: bytes = bytes(layer)
    return data


def scapy_options(data: bytes) -> dict[Any, Any]:
    """scapy's parsed options as a dict (its names for the options it knows)."""
    parsed = BOOTP(data)
    return {opt[0]: opt[1:] for opt in parsed[DHCP].options if isinstance(opt, tuple)}


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_we_decode_scapy_built_client_discovers(name: str) -> None:
    options, broadcast, firmware = CLIENTS[name]
    data = scapy_request(list(options), flags=0x8000 if broadcast else 0)
    packet = decode(data)
    assert dict(packet.options) == dict(options)
    assert packet.mac == MacAddress.from_bytes(MAC)
    assert packet.broadcast is broadcast
    assert classify_firmware(packet) == firmware


def test_we_decode_scapy_named_options() -> None:
    data = scapy_request(
        [
            ("message-type", "request"),
            ("server_id", "10.0.0.1"),
            ("requested_addr", "10.0.0.5"),
            ("max_dhcp_size", 1500),
            ("param_req_list", [1, 3, 6, 67]),
            ("hostname", b"node007"),
            ("relay_agent_information", AGENT),
        ],
        giaddr=str(RELAY),
    )
    packet = decode(data)
    assert packet.message_type is MessageType.REQUEST
    assert packet.server_id == SERVER
    assert packet.requested_ip == IPv4Address("10.0.0.5")
    assert packet.max_message_size == 1500
    assert packet.parameter_requests == bytes([1, 3, 6, 67])
    assert packet.options[12] == b"node007"
    info = packet.relay_agent_info
    assert info is not None
    assert info.circuit_id == b"sw12"
    assert info.remote_id == b"p7"
    segment = p.Segment(frozenset({SERVER}), frozenset({RELAY}))
    decision = p.classify(packet, segment)
    assert isinstance(decision, p.DhcpRequest)
    assert decision.state is p.RequestState.SELECTING


def test_scapy_decodes_our_offer() -> None:
    request = decode(
        scapy_request(
            [
                ("message-type", "discover"),
                ("param_req_list", [1, 3, 6, 15, 26, 67]),
                (93, b"\x00\x00"),
                ("relay_agent_information", AGENT),
            ],
            giaddr=str(RELAY),
        )
    )
    subnet = subnet_options(
        IPv4Network("10.0.0.0/24"), routers=[SERVER], dns=[SERVER], domain="cluster", mtu=9000
    )
    boot = boot_file(
        Firmware.BIOS, FirstStageFiles(), server=SERVER, mac=MacAddress.from_bytes(MAC)
    )
    reply = offer_reply(request, SERVER, Grant(IPv4Address("10.0.0.5"), 3600, subnet), boot)
    data = encode(reply)
    parsed = BOOTP(data)
    assert (parsed.op, parsed.xid, parsed.flags) == (2, 0xCAFE, 0)
    assert parsed.yiaddr == "10.0.0.5"
    assert parsed.siaddr == "10.0.0.1"
    assert parsed.giaddr == str(RELAY)
    assert parsed.chaddr[:6] == MAC
    assert parsed.file.rstrip(b"\0") == b"undionly.kpxe"
    options = scapy_options(data)
    assert options["message-type"] == (2,)
    assert options["server_id"] == ("10.0.0.1",)
    assert options["lease_time"] == (3600,)
    assert options["renewal_time"] == (1800,)
    assert options["subnet_mask"] == ("255.255.255.0",)
    assert options["router"] == ("10.0.0.1",)
    assert options["domain"] == (b"cluster",)
    assert options["interface-mtu"] == (9000,)
    assert options["boot-file-name"] == (b"undionly.kpxe",)
    assert options["relay_agent_information"] == (AGENT,)


def test_scapy_decodes_our_nak_and_proxy_ack() -> None:
    request = decode(
        scapy_request(
            [
                ("message-type", "request"),
                ("vendor_class_id", b"PXEClient:Arch:00007"),
                (97, b"\0" + NODE_UUID.bytes_le),
            ],
            ciaddr="192.168.1.50",
        )
    )
    nak = scapy_options(encode(nak_reply(request, SERVER, "no")))
    assert nak["message-type"] == (6,)
    assert nak["error_message"] == (b"no",)
    ack_data = encode(proxy_reply(request, SERVER, BootInfo("ipxe.efi", SERVER), Firmware.UEFI))
    ack = scapy_options(ack_data)
    assert ack["message-type"] == (5,)
    assert ack["vendor_class_id"] == (b"PXEClient",)
    assert ack["pxe_client_machine_identifier"] == (b"\0" + NODE_UUID.bytes_le,)
    assert BOOTP(ack_data).ciaddr == "192.168.1.50"


def test_scapy_sees_our_long_option_as_consecutive_fragments() -> None:
    value = bytes(range(256)) * 2
    request = decode(scapy_request([("message-type", "discover"), ("max_dhcp_size", 1500)]))
    offer = offer_reply(request, SERVER, Grant(IPv4Address("10.0.0.5"), 60, {43: value}))
    parsed = BOOTP(encode(offer))[DHCP].options
    fragments = [opt[1] for opt in parsed if isinstance(opt, tuple) and opt[0] == "vendor_specific"]
    assert [len(f) for f in fragments] == [255, 255, 2]
    assert b"".join(fragments) == value


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ([("message-type", "discover"), ("message-type", "request")], "duplicate_53"),
        (
            [("message-type", "request"), ("server_id", "10.0.0.1"), ("server_id", "10.0.0.9")],
            "duplicate_54",
        ),
        ([("hostname", b"x")], "missing_53"),
        ([(53, b"\x01\x02")], "bad_53"),
        ([("message-type", "discover"), ("relay_agent_information", b"\x01\x09x")], "bad_option82"),
    ],
)
def test_scapy_crafted_malformed(options: list[Any], reason: str) -> None:
    with pytest.raises(MalformedPacket) as caught:
        decode(scapy_request(options))
    assert caught.value.reason == reason


def test_scapy_crafted_truncation_and_hlen() -> None:
    data = scapy_request([("message-type", "discover"), ("hostname", b"node007")])
    with pytest.raises(MalformedPacket) as caught:
        decode(data[: data.index(b"node007") + 3])
    assert caught.value.reason == "option_overrun"
    bad_hlen: bytes = bytes(BOOTP(hlen=20, chaddr=MAC) / DHCP(options=[("message-type", 1), "end"]))
    with pytest.raises(MalformedPacket) as caught:
        decode(bad_hlen)
    assert caught.value.reason == "hlen"
