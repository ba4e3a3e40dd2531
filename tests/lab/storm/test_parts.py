"""The storm's pure parts: DHCP frames around the packet codec, the overlay read as /init reads
it, rates, sizes, losses, MACs and the BIOS/UEFI mix."""

from __future__ import annotations

import uuid

import pytest

from provisioner.boot.overlay import token_archive
from provisioner.dhcp.options import MessageType, Opt
from provisioner.dhcp.packet import BOOTREQUEST, DhcpPacket, decode, encode
from provisioner.errors import ConfigError
from provisioner.images.format import compress, cpio
from provisioner.lab.storm.appliance import StormOptions, parse_size
from provisioner.lab.storm.clients import arch_of, node_specs, storm_mac
from provisioner.lab.storm.network import loss_rule, rate_bits, tbf_burst
from provisioner.lab.storm.node import parse_env, unpack_overlay
from provisioner.lab.storm.rawdhcp import _checksum, frame, payload_of, request_options
from provisioner.render.environment import shquote


def test_a_frame_carries_the_dhcp_packet_from_the_nodes_mac_to_broadcast() -> None:
    mac = bytes.fromhex("525401000001")
    options = request_options(MessageType.DISCOVER, "uefi", False, uuid.uuid4())
    payload = encode(DhcpPacket(op=BOOTREQUEST, xid=7, chaddr=mac + bytes(10), options=options))
    data = frame(mac, payload)
    assert data[:6] == b"\xff" * 6 and data[6:12] == mac and data[12:14] == b"\x08\x00"
    assert _checksum(data[14:34]) == 0  # a correct IPv4 header checksum sums to zero
    assert data[30:34] == b"\xff" * 4 and data[36:38] == b"\x00\x43"  # to 255.255.255.255:67
    back = decode(payload_of(data) or b"")
    assert back.xid == 7 and back.client_arch == 7
    assert back.vendor_class == b"PXEClient:Arch:00007:UNDI:003016"
    assert Opt.USER_CLASS not in back.options


def test_ipxe_says_so_in_its_user_class() -> None:
    options = request_options(MessageType.REQUEST, "bios", True, uuid.uuid4())
    assert options[Opt.USER_CLASS] == b"iPXE" and options[Opt.CLIENT_ARCH] == b"\x00\x00"


def test_the_overlay_is_read_as_the_kernel_unpacks_it() -> None:
    env = (f"PROVISIONER_NODE={shquote('storm00001')}\n"
           f"PROVISIONER_CALLBACK_URL={shquote('http://10.97.0.1:8080/node/v1/booted')}\n"
           "PROVISIONER_TOKEN=\nexport PROVISIONER_NODE\n")
    part = compress.xz_bytes(cpio.pack([cpio.directory("etc"), cpio.directory("etc/provisioner"),
                                        cpio.file("etc/provisioner/node.env", env.encode())]),
                             preset=1)
    overlay = part + b"\0" * (-len(part) % 4) + token_archive("t0ken")
    files = unpack_overlay(overlay)
    assert files["etc/provisioner/token"] == b"t0ken"
    parsed = parse_env(files["etc/provisioner/node.env"].decode())
    assert parsed["PROVISIONER_NODE"] == "storm00001"
    assert parsed["PROVISIONER_CALLBACK_URL"] == "http://10.97.0.1:8080/node/v1/booted"
    assert parsed["PROVISIONER_TOKEN"] == ""


def test_rates_sizes_and_losses() -> None:
    assert rate_bits("1gbit") == 1e9 and rate_bits("100mbit") == 1e8
    assert rate_bits("125mbps") == 1e9
    assert tbf_burst(1e9) == 1_250_000 and tbf_burst(1e6) == 64 << 10
    assert loss_rule(1) == "numgen random mod 10000 < 100 drop"
    assert loss_rule(0.5) == "numgen random mod 10000 < 50 drop"
    assert parse_size("64M") == 64 << 20 and parse_size("512k") == 512 << 10
    assert parse_size("1G") == 1 << 30 and parse_size("1000") == 1000
    for bad in (lambda: rate_bits("fast"), lambda: loss_rule(100), lambda: parse_size("x"),
                lambda: StormOptions(5, link="fast")):  # refused before any lab is made
        with pytest.raises(ConfigError):
            bad()


def test_macs_are_distinct_and_the_mix_is_even() -> None:
    assert storm_mac(1) == "52:54:01:00:00:01" and storm_mac(256) == "52:54:01:00:01:00"
    specs = node_specs(1000, 0.5)
    assert len({s.mac for s in specs}) == 1000
    assert sum(s.arch == "uefi" for s in specs) == 500
    assert [arch_of(i, 0.25) for i in range(4)] == ["bios", "bios", "bios", "uefi"]
    assert all(arch_of(i, 0.0) == "bios" for i in range(10))
