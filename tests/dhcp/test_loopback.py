"""The DHCP server in process, over loopback with a fake relay agent (tests/dhcp/loopback.py):
drops by reason, relay and option 82, proxy mode, discovery (and `provisioner node list --state
discovered`, and a burst of unknown MACs), INIT-REBOOT, DECLINE, and boot files per firmware.
These read the server's counters. Root: the relay socket binds port 67."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from ipaddress import IPv4Address
from typing import Any

import pytest

from provisioner.dhcp.packet import MAGIC
from provisioner.nodes.model import MacAddress, Node, NodeState
from tests.dhcp.loopback import (
    ACK,
    AGENT_INFO,
    BOOT_PORT,
    DISCOVER,
    NAK,
    NETWORK,
    OFFER,
    POOL,
    REQUEST,
    Factory,
    bootp,
    idle,
    known,
    malformed,
    output,
    until,
)

pytestmark = pytest.mark.netns


async def test_malformed_datagrams_are_counted_by_reason(loopback: Factory) -> None:
    lab = await loopback()
    expected: dict[str, int] = {}
    for data, why in malformed(giaddr=lab.relay):
        lab.send(data)
        expected[why] = expected.get(why, 0) + 1
    lab.send(lab.request(DISCOVER, "02:00:00:00:00:09", giaddr=IPv4Address("192.0.2.7")))
    expected["ignored:unknown_relay"] = 1
    for key, count in expected.items():
        await lab.counted(key, count)
    lab.nothing_queued()
    dropped = {k: v for k, v in lab.server.counters.items() if k.startswith("dropped:")}
    assert dropped == {k: v for k, v in expected.items() if k.startswith("dropped:")}
    # ...and the next good request is answered.
    good = lab.request(DISCOVER, "02:00:00:00:00:0a", xid=0x600D)
    lab.send(good)
    offer = await lab.reply()
    assert (offer.xid, offer.message_type, offer.giaddr) == (0x600D, OFFER, lab.relay)
    assert POOL[0] <= offer.yiaddr <= POOL[1]


async def test_a_64k_discover_is_answered(loopback: Factory) -> None:
    """65507 bytes (the UDP maximum) of a valid DISCOVER padded with pad options: not
    malformed, so answered, with a reply that fits the client's 576-byte default."""
    lab = await loopback()
    head = bootp(xid=0xB16, giaddr=lab.relay) + MAGIC + b"\x35\x01\x01"
    lab.send(head.ljust(65506, b"\0") + b"\xff")
    offer = await lab.reply()
    assert offer.xid == 0xB16 and offer.message_type == OFFER


async def test_relayed_dora_echoes_option_82(loopback: Factory) -> None:
    lab = await loopback()
    mac = "02:00:00:00:01:01"
    lab.send(lab.request(DISCOVER, mac, xid=0x82, o82=AGENT_INFO, o55=bytes((1, 3, 51))))
    offer = await lab.reply()
    assert (offer.message_type, offer.giaddr, offer.xid) == (OFFER, lab.relay, 0x82)
    assert offer.yiaddr in NETWORK and POOL[0] <= offer.yiaddr <= POOL[1]
    assert offer.options[82] == AGENT_INFO  # RFC 3046 2.2: echoed unchanged
    assert list(offer.options)[-1] == 82  # ...and last
    assert offer.options[1] == NETWORK.netmask.packed
    assert offer.options[3] == IPv4Address("10.77.0.1").packed
    lab.send(lab.request(REQUEST, mac, xid=0x83, o82=AGENT_INFO, o50=offer.yiaddr.packed,
                         o54=lab.server_ip.packed))
    ack = await lab.reply()
    assert (ack.message_type, ack.yiaddr, ack.options[82]) == (ACK, offer.yiaddr, AGENT_INFO)
    stored = await lab.inventory.get_lease(offer.yiaddr)
    assert stored is not None and stored.value.mac == MacAddress(mac)  # durable before the ACK


async def test_relay_not_configured_is_ignored(loopback: Factory) -> None:
    lab = await loopback()
    lab.send(lab.request(DISCOVER, "02:00:00:00:01:02", giaddr=IPv4Address("10.77.0.1")))
    await lab.counted("ignored:unknown_relay")
    assert lab.server.counters["sent:offer"] == 0
    lab.nothing_queued()


PXE_BIOS: dict[str, Any] = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": b"\x00\x00"}


async def test_proxy_mode_answers_pxe_clients_only(loopback: Factory) -> None:
    lab = await loopback(mode="proxy")
    mac = "02:00:00:00:02:01"
    lab.send(lab.request(DISCOVER, mac, xid=0x9E, o97=b"\x00" + bytes(range(16)), **PXE_BIOS))
    offer = await lab.reply()
    assert (offer.message_type, offer.xid, offer.yiaddr) == (OFFER, 0x9E, IPv4Address(0))
    assert offer.options[60] == b"PXEClient"
    assert offer.options[54] == lab.server_ip.packed
    assert offer.options[97] == b"\x00" + bytes(range(16))
    assert (offer.file, offer.siaddr) == (b"undionly.kpxe", lab.server_ip)
    assert 51 not in offer.options  # no address, no lease
    # A client that is not PXE belongs to the site's DHCP server: not a word from us.
    lab.send(lab.request(DISCOVER, "02:00:00:00:02:02"))
    await lab.counted("ignored:not_pxe")
    lab.nothing_queued()
    # PXE boot server discovery on port 4011 (PXE spec 2.2.4): answered to the sender.
    ciaddr = IPv4Address("10.77.0.50")
    lab.send(lab.request(REQUEST, mac, xid=0x4011, ciaddr=ciaddr,
                         o60=b"PXEClient:Arch:00007:UNDI:003016", o93=b"\x00\x07"), port=4011)
    ack = await lab.reply()
    assert (ack.message_type, ack.xid, ack.ciaddr, ack.file) == (ACK, 0x4011, ciaddr,
                                                                 b"ipxe.efi")


async def test_discovery_adds_nodes_named_by_pattern_and_by_port(loopback: Factory) -> None:
    lab = await loopback(store="sqlite", discovery=True, circuit_names=("sw1/p07=rack1-n07",))
    offered: dict[str, IPv4Address] = {}
    for mac in ("02:00:00:00:03:01", "02:00:00:00:03:02"):
        lab.send(lab.request(DISCOVER, mac, **PXE_BIOS))
        offered[mac] = (await lab.reply()).yiaddr
    port_mac = "02:00:00:00:03:03"
    lab.send(lab.request(DISCOVER, port_mac, o82=AGENT_INFO))
    offered[port_mac] = (await lab.reply()).yiaddr
    nodes = {n.mac.value: n for n in await lab.inventory.list_nodes(state=NodeState.DISCOVERED)}
    assert {mac: (n.name, n.ip) for mac, n in nodes.items()} == {
        "02:00:00:00:03:01": ("node001", offered["02:00:00:00:03:01"]),
        "02:00:00:00:03:02": ("node002", offered["02:00:00:00:03:02"]),
        port_mac: ("rack1-n07", offered[port_mac]),
    }
    assert nodes["02:00:00:00:03:01"].firmware == "bios"
    assert lab.server.counters["discovered"] == 3
    # An operator sees them with the CLI, on the same data directory.
    env = {**os.environ, "PROVISIONER_DATA_DIR": str(lab.data_dir), "PROVISIONER_CONFIG": ""}
    listed = subprocess.run([sys.executable, "-m", "provisioner", "node", "list", "--state",
                             "discovered", "--json"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert listed.returncode == 0, output(listed)
    rows = json.loads(listed.stdout)
    assert sorted(row["name"] for row in rows) == ["node001", "node002", "rack1-n07"]
    # A known node is offered its own (now reserved) address again.
    lab.send(lab.request(DISCOVER, "02:00:00:00:03:01"))
    assert (await lab.reply()).yiaddr == offered["02:00:00:00:03:01"]


async def test_discovery_dry_run_neither_answers_nor_adds(loopback: Factory) -> None:
    lab = await loopback(discovery=True, discovery_dry_run=True)
    lab.send(lab.request(DISCOVER, "02:00:00:00:04:01"))
    await lab.counted("discovery_dry_run")
    lab.nothing_queued()
    assert await lab.inventory.list_nodes() == []
    assert await lab.inventory.list_leases() == []


async def test_init_reboot_silent_when_unknown_nak_when_wrong(loopback: Factory) -> None:
    lab = await loopback()
    # Unknown client: no record, so silence (RFC 2131 4.3.2), another server may know it.
    lab.send(lab.request(REQUEST, "02:00:00:00:05:01", o50=IPv4Address("10.77.0.20").packed))
    await lab.counted("request_silent")
    lab.nothing_queued()
    # A known client: DORA first.
    mac = "02:00:00:00:05:02"
    lab.send(lab.request(DISCOVER, mac))
    offer = await lab.reply()
    lab.send(lab.request(REQUEST, mac, o50=offer.yiaddr.packed, o54=lab.server_ip.packed))
    assert (await lab.reply()).message_type == ACK
    # INIT-REBOOT asking for another address: NAK (broadcast bit set for the relay).
    wrong = IPv4Address(int(offer.yiaddr) + 1)
    lab.send(lab.request(REQUEST, mac, xid=0xBAD1, o50=wrong.packed))
    nak = await lab.reply()
    assert (nak.message_type, nak.xid, nak.yiaddr) == (NAK, 0xBAD1, IPv4Address(0))
    assert nak.flags & 0x8000 and nak.options[56] == f"your address is {offer.yiaddr}".encode()
    # ...on the wrong network: NAK too.
    lab.send(lab.request(REQUEST, mac, xid=0xBAD2, o50=IPv4Address("192.0.2.9").packed))
    assert (await lab.reply()).message_type == NAK
    # ...its own address: ACK.
    lab.send(lab.request(REQUEST, mac, xid=0x600D, o50=offer.yiaddr.packed))
    ack = await lab.reply()
    assert (ack.message_type, ack.xid, ack.yiaddr) == (ACK, 0x600D, offer.yiaddr)


async def test_a_relayed_request_with_ciaddr_is_rebinding(
        loopback: Factory, caplog: pytest.LogCaptureFixture) -> None:
    """The relay sends us unicast what the client broadcast (RFC 1542 4.1.1): a relayed
    REQUEST with ciaddr is a REBINDING client however it reached us, and it is ACKed."""
    caplog.set_level(logging.DEBUG, logger="provisioner.dhcp.server")
    lab = await loopback()
    mac = "02:00:00:00:05:03"
    lab.send(lab.request(DISCOVER, mac))
    offer = await lab.reply()
    lab.send(lab.request(REQUEST, mac, o50=offer.yiaddr.packed, o54=lab.server_ip.packed))
    assert (await lab.reply()).message_type == ACK
    lab.send(lab.request(REQUEST, mac, xid=0x5EB1, ciaddr=offer.yiaddr))
    ack = await lab.reply()
    assert (ack.message_type, ack.xid, ack.yiaddr) == (ACK, 0x5EB1, offer.yiaddr)
    states = [r.getMessage() for r in caplog.records if "xid 00005eb1" in r.getMessage()]
    assert states and "RequestState.REBINDING" in states[0], states


async def test_a_steady_stream_is_read_in_bursts_and_every_request_answered(
        loopback: Factory) -> None:
    """DISCOVERs closer together than COALESCE: the socket rests between reads (counted), and
    each one is still answered, once."""
    lab = await loopback()
    xids = list(range(0x7000, 0x7000 + 60))  # within the fixture's pool
    for index, xid in enumerate(xids):
        lab.send(lab.request(DISCOVER, f"02:00:00:00:{index >> 8:02x}:{index & 255:02x}",
                             xid=xid))
        await asyncio.sleep(0.0003)
    answered = [(await lab.reply()).xid for _ in xids]
    assert sorted(answered) == xids
    assert lab.server.counters["read_pauses"] > 0, dict(lab.server.counters)
    lab.nothing_queued()


async def test_boot_file_follows_the_firmware(loopback: Factory) -> None:
    lab = await loopback()
    cases: list[tuple[str, dict[str, Any], bytes]] = [
        ("02:00:00:00:06:01", PXE_BIOS, b"undionly.kpxe"),
        ("02:00:00:00:06:02", {"o60": b"PXEClient:Arch:00007:UNDI:003016", "o93": b"\x00\x07"},
         b"ipxe.efi"),
        ("02:00:00:00:06:03", {"o60": b"PXEClient:Arch:00011:UNDI:003016", "o93": b"\x00\x0b"},
         b"ipxe-arm64.efi"),
        ("02:00:00:00:06:04", {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": b"\x00\x00",
                               "o77": b"\x04iPXE"},
         f"http://{lab.server_ip}:{BOOT_PORT}/boot/02:00:00:00:06:04.ipxe".encode()),
        ("02:00:00:00:06:05", {}, b""),  # not a network boot: an address, no file
    ]
    for mac, options, expected in cases:
        lab.send(lab.request(DISCOVER, mac, **options))
        offer = await lab.reply()
        assert offer.message_type == OFFER and offer.yiaddr != IPv4Address(0)
        assert offer.file == expected, (mac, offer.file)
        assert offer.siaddr == (lab.server_ip if expected else IPv4Address(0))
    # A node's own `bootfile` setting wins (not for iPXE: it always gets its script).
    await lab.inventory.add_node(Node(MacAddress("02:00:00:00:06:06"), "custom",
                                      settings={"bootfile": "snponly.efi"}))
    await until(lambda: known(lab, "02:00:00:00:06:06"), "the node is in the cache",
                 lambda: "")
    lab.send(lab.request(DISCOVER, "02:00:00:00:06:06", **PXE_BIOS))
    assert (await lab.reply()).file == b"snponly.efi"


async def test_decline_quarantines_only_the_decliners_address(
        loopback: Factory, caplog: pytest.LogCaptureFixture) -> None:
    lab = await loopback()

    async def dora(mac: str) -> IPv4Address:
        lab.send(lab.request(DISCOVER, mac))
        offer = await lab.reply()
        lab.send(lab.request(REQUEST, mac, o50=offer.yiaddr.packed, o54=lab.server_ip.packed))
        ack = await lab.reply()
        assert ack.message_type == ACK
        return ack.yiaddr

    owner, other = "02:00:00:00:07:01", "02:00:00:00:07:02"
    ip = await dora(owner)
    # Another host DECLINEs the owner's address, again and again: ignored, the owner keeps
    # it, and the forger gets one log line, not one per packet.
    with caplog.at_level(logging.WARNING, logger="provisioner.dhcp"):
        for xid in range(5):
            lab.send(lab.request(4, other, xid=0x70 + xid, o50=ip.packed,
                                 o54=lab.server_ip.packed))
        await lab.counted("received:decline", 5)
        await idle(lab)
    assert lab.server.counters["lease_declined"] == 0
    assert lab.server.counters["decline_ignored"] == 5
    assert sum("not its lease" in r.getMessage() for r in caplog.records) == 1
    stored = await lab.inventory.get_lease(ip)
    assert stored is not None and (stored.value.mac, stored.value.state) == (
        MacAddress(owner), "bound")
    lab.send(lab.request(REQUEST, owner, xid=0x4E, o50=ip.packed))  # INIT-REBOOT
    ack = await lab.reply()
    assert (ack.message_type, ack.yiaddr) == (ACK, ip)
    # The owner itself DECLINEs it (ARP found it in use): quarantined, not offered again.
    lab.send(lab.request(4, owner, o50=ip.packed, o54=lab.server_ip.packed))
    await lab.counted("lease_declined")
    stored = await lab.inventory.get_lease(ip)
    assert stored is not None and stored.value.state == "declined"
    lab.send(lab.request(DISCOVER, owner, o50=ip.packed))
    assert (await lab.reply()).yiaddr not in (ip, IPv4Address(0))


async def test_discovery_burst_gives_distinct_addresses(loopback: Factory) -> None:
    """A rack powered on at once: unknown MACs DISCOVER together, before any of their nodes is
    stored, all asking for the same address. Each becomes one node with its own name and
    address, and each is offered that address."""
    lab = await loopback(store="sqlite", discovery=True)
    macs = [f"02:00:00:00:08:{i:02x}" for i in range(12)]
    wanted = IPv4Address("10.77.0.42")
    for mac in macs:
        lab.send(lab.request(DISCOVER, mac, o50=wanted.packed))
    offers = {}
    for _ in macs:
        offer = await lab.reply()
        offers[offer.chaddr[:6].hex(":")] = offer.yiaddr
    assert set(offers) == set(macs)
    nodes = await lab.inventory.list_nodes(state=NodeState.DISCOVERED)
    assert len(nodes) == len(macs)
    assert len({n.ip for n in nodes}) == len(macs), sorted((str(n.ip), n.name) for n in nodes)
    assert len({n.name for n in nodes}) == len(macs)
    assert {n.mac.value: n.ip for n in nodes} == offers
    assert wanted in offers.values()
