"""The DHCP server against real clients and hand-made datagrams.

Two halves, both needing root (network namespaces; port 67):

- Across a veth between two network namespaces (`dhcp_lab`, tests/dhcp/conftest.py): busybox
  udhcpc gets an address, renews it (SIGUSR1, unicast from the address it configured) and
  releases it (SIGUSR2); ISC dhclient gets an address, gets it again from INIT-REBOOT with its
  lease file, and releases it; Kea's perfdhcp, acting as a relay agent, completes DORA
  exchanges; malformed datagrams are dropped (one debug line each, by reason) and the next
  client is answered; another DHCP server (a forged OFFER, then a real dnsmasq) is detected on
  port 68, logged and recorded as an event.
- In process, over loopback (`loopback`): a DhcpServer on 127.A.B.1 and a fake relay agent on
  127.A.B.2:67 (a relayed request is answered to giaddr:67, so no broadcast is needed). These
  read the server's counters: drops by reason, relay and option 82, proxy mode, discovery (and
  `provisioner node list --state discovered`, and a burst of unknown MACs), INIT-REBOOT,
  DECLINE, and boot files per firmware.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp.packet import MAGIC, DhcpPacket, decode, encode
from provisioner.dhcp.server import DhcpServer
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Lease, MacAddress, Node, NodeState
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore
from provisioner.store.sqlite import SqliteStore
from tests.dhcp.conftest import BOOT_PORT, DhcpLab, discover

pytestmark = pytest.mark.netns

ZERO = IPv4Address(0)
WAIT = 10.0  # seconds any one expected event may take (a reply, a log line, a stored lease)
_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s")


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n" \
           f"{result.stderr}"


async def _until(check: Callable[[], Awaitable[Any]], what: str, detail: Callable[[], str],
                 limit: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy (bounded); fail with `detail()`."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f} s: {what}\n{detail()}")
        await asyncio.sleep(0.05)


async def _lease_of(lab: DhcpLab, mac: str) -> Lease | None:
    """The lease the server stored for `mac` (read from its sqlite store, as an operator can)."""
    store = SqliteStore(lab.data_dir / "store.db")
    try:
        leases = await Inventory(store).list_leases()
    finally:
        await store.close()
    return next((lease for lease in leases if lease.mac == MacAddress(mac)), None)


# -- real clients across the veth -------------------------------------------------------------


async def _logged(lab: DhcpLab, pattern: str) -> bool:
    return re.search(pattern, lab.full_log()) is not None


def _events(path: Path) -> list[tuple[str, str]]:
    """udhcpc script calls, as (event, ip)."""
    if not path.exists():
        return []
    return [(event, ip) for event, _, ip in
            (line.partition(" ") for line in path.read_text().splitlines())]


async def test_udhcpc_gets_renews_and_releases(dhcp_lab: DhcpLab) -> None:
    lab = dhcp_lab
    mac = lab.new_mac()
    events, out = lab.base / f"udhcpc-{mac[-2:]}.events", lab.base / f"udhcpc-{mac[-2:]}.log"
    env = {**os.environ, "UDHCPC_EVENTS": str(events)}
    with out.open("w") as log:
        proc = lab.pair.spawn(lab.pair.client_ns, [
            "busybox", "udhcpc", "-f", "-i", lab.pair.client_if, "-t", "5", "-T", "1",
            "-s", str(lab.base / "udhcpc.sh")], log=log, env=env)

    def detail() -> str:
        return f"--- udhcpc ---\n{out.read_text()}\n--- server ---\n{lab.log()}"

    async def bound(kind: str) -> str | None:
        return next((ip for event, ip in _events(events) if event == kind), None)

    ip = ""
    try:
        ip = await _until(lambda: bound("bound"), "udhcpc bound", detail)
        first, last = lab.pool
        assert first <= IPv4Address(ip) <= last, detail()
        lease = await _until(lambda: _lease_of(lab, mac), "lease stored", detail)
        assert (str(lease.ip), lease.state) == (ip, "bound"), detail()

        os.kill(proc.pid, signal.SIGUSR1)  # renew: a unicast REQUEST from ip to the server
        renewed = await _until(lambda: bound("renew"), "udhcpc renewed", detail)
        assert renewed == ip, detail()
        assert "sending renew to server" in out.read_text(), detail()
        assert "broadcasting renew" not in out.read_text(), detail()
        later = await _lease_of(lab, mac)
        # Seconds into a 3600 s lease the renewal is ACKed from the recorded lease, with no
        # store write ([dhcp] lease_cache_threshold): the same expiry.
        assert later is not None and later.expires == lease.expires, detail()

        # A REBINDING client broadcasts the same REQUEST (ciaddr set, no server id).
        rebind_xid = secrets.randbits(32)
        lab.probe(encode(DhcpPacket(op=1, xid=rebind_xid, chaddr=MacAddress(mac).packed,
                                    ciaddr=IPv4Address(ip), options={53: b"\x03"})))
        await _until(lambda: _logged(lab, rf"xid {rebind_xid:08x} .*REBINDING"),
                     "the broadcast REQUEST logged as REBINDING", detail)

        os.kill(proc.pid, signal.SIGUSR2)  # release

        async def released() -> bool:
            now = await _lease_of(lab, mac)
            return now is not None and now.state == "released"

        await _until(released, "lease released in the store", detail)
    finally:
        lab.pair.stop(proc)
        lab.drop_address(ip)
    # udhcpc's renewal was unicast to the server, so it arrived on the socket bound to the
    # server's own address: RENEWING (RFC 2131 section 4.3.2), not REBINDING.
    renewals = re.findall(rf"3 from {mac} xid (\w+) .*ciaddr=IPv4Address\('{re.escape(ip)}'\)"
                          r".*state=<RequestState.(\w+)", lab.full_log())
    assert ("RENEWING" in {state for xid, state in renewals
                           if int(xid, 16) != rebind_xid}), detail()


async def test_dhclient_gets_reboots_and_releases(dhcp_lab: DhcpLab) -> None:
    lab = dhcp_lab
    mac = lab.new_mac()
    pidfile, leasefile = lab.base / "dhclient.pid", lab.base / f"dhclient-{mac[-2:]}.leases"
    common = ["-v", "-sf", "/bin/true", "-pf", str(pidfile), "-lf", str(leasefile)]
    try:
        first = lab.client(["dhclient", "-1", *common, lab.pair.client_if])
        assert first.returncode == 0, _output(first) + lab.log()
        got = re.search(r"DHCPACK of (\S+) from", first.stderr)
        assert got and "DHCPDISCOVER" in first.stderr, _output(first)
        ip = got.group(1)
        lease = await _lease_of(lab, mac)
        assert lease is not None and (str(lease.ip), lease.state) == (ip, "bound"), lab.log()
        stop = lab.client(["dhclient", "-x", *common, lab.pair.client_if])  # no release
        assert stop.returncode == 0, _output(stop)

        # The lease file is still valid: dhclient starts in INIT-REBOOT (REQUEST, no DISCOVER).
        again = lab.client(["dhclient", "-1", *common, lab.pair.client_if])
        assert again.returncode == 0, _output(again) + lab.log()
        assert "DHCPDISCOVER" not in again.stderr, _output(again)
        assert f"DHCPREQUEST for {ip}" in again.stderr, _output(again)
        assert f"DHCPACK of {ip}" in again.stderr, _output(again)
        assert re.search(rf"3 from {mac} .*state=<RequestState.INIT_REBOOT",
                         lab.full_log()), lab.log()

        release = lab.client(["dhclient", "-r", *common, lab.pair.client_if])
        assert release.returncode == 0, _output(release)
        assert f"DHCPRELEASE of {ip}" in release.stderr, _output(release)

        async def released() -> bool:
            now = await _lease_of(lab, mac)
            return now is not None and now.state == "released"

        await _until(released, "lease released in the store", lab.log)
    finally:
        lab.client(["dhclient", "-x", *common, lab.pair.client_if])  # never leave a daemon


_PERF_STAT = re.compile(r"\*\*\*Statistics for: (\S+)\*\*\*")


def _perfdhcp_stats(text: str) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    section: dict[str, float] | None = None
    for line in text.splitlines():
        if m := _PERF_STAT.match(line):
            section = stats.setdefault(m.group(1), {})
        elif section is not None and (m := re.match(r"^([a-z ]+): ([\d.]+)$", line)):
            section[m.group(1)] = float(m.group(2))
    return stats


async def test_perfdhcp_completes_dora_exchanges(dhcp_lab: DhcpLab) -> None:
    """perfdhcp simulates a relay agent: giaddr is the client namespace's address, which the lab
    configures as the relay of its own subnet; the answers come back to it on port 67."""
    lab = dhcp_lab
    exchanges, clients = 200, 100
    result = lab.client(["perfdhcp", "-4", "-g", "single", "-l", lab.pair.client_if,
                         "-r", "100", "-R", str(clients), "-n", str(exchanges),
                         "-W", "500000"], timeout=60)
    text = result.stdout + result.stderr
    stats = _perfdhcp_stats(text)
    assert {"DISCOVER-OFFER", "REQUEST-ACK"} <= set(stats), text + lab.log()
    offers, acks = stats["DISCOVER-OFFER"], stats["REQUEST-ACK"]
    assert offers["sent packets"] == exchanges, text
    assert offers["received packets"] >= exchanges * 0.97, text + lab.log()
    assert acks["received packets"] >= exchanges * 0.97, text + lab.log()
    assert acks["rejected leases"] == 0, text
    # The leases are durable, in the relay's subnet, one address per client.
    store = SqliteStore(lab.data_dir / "store.db")
    try:
        leases = [lease for lease in await Inventory(store).list_leases()
                  if lease.ip in lab.relayed]
    finally:
        await store.close()
    assert 0 < len(leases) <= clients, leases
    assert len({lease.mac for lease in leases}) == len(leases)
    assert all(lease.state == "bound" for lease in leases)


def _bootp(op: int = 1, *, hlen: int = 6, xid: int = 1, chaddr: bytes = b"\x02\0\0\0\0\x01",
           giaddr: IPv4Address = ZERO, ciaddr: IPv4Address = ZERO, flags: int = 0x8000,
           htype: int = 1) -> bytes:
    """A 236-byte BOOTP header, built with struct (independently of the codec under test)."""
    return _HEADER.pack(op, htype, hlen, 0, xid, 0, flags, int(ciaddr), 0, 0, int(giaddr),
                        chaddr, b"", b"")


def _malformed(giaddr: IPv4Address = ZERO) -> list[tuple[bytes, str]]:
    """(datagram, counter) pairs: what each malformed datagram must be counted as."""
    head = _bootp(giaddr=giaddr) + MAGIC
    return [
        (b"", "dropped:short_header"),
        (bytes(100), "dropped:short_header"),
        (head + b"\x35\x01\x01\x0c\xc8abc", "dropped:option_overrun"),  # 12 claims 200 bytes
        (head + b"\x0c\x01x\xff", "dropped:missing_53"),
        (head + b"\x35\x02\x01\x01\xff", "dropped:bad_53"),  # 53 of length 2
        (head + b"\x35\x01\x01\x35\x01\x03\xff", "dropped:duplicate_53"),
        (head + b"\x35\x01\x03\x36\x04\x0a\x00\x00\x01\x36\x04\x0a\x00\x00\x02\xff",
         "dropped:duplicate_54"),
        (_bootp(hlen=17, giaddr=giaddr) + MAGIC + b"\x35\x01\x01\xff", "dropped:hlen"),
        (head + b"\x35\x01\x01\x52\x03\x01\x05x\xff", "dropped:bad_option82"),  # sub-opt overrun
        (b"\xaa" * 65507, "dropped:bad_op"),  # the largest UDP payload over IPv4
        (head + b"\x35\x01\x02\xff", "ignored:server_message"),  # an OFFER from a "client"
    ]


async def test_malformed_datagrams_are_dropped_then_udhcpc_is_answered(dhcp_lab: DhcpLab) -> None:
    lab = dhcp_lab
    before = lab.full_log().count("dhcp: dropped")
    xid = secrets.randbits(32)
    good = encode(discover(bytes.fromhex("02aabbccdd02"), xid))
    replies = lab.probe(*(data for data, _ in _malformed()), good, wait=1.0)
    offers = lab.offers(replies, xid)
    assert len(offers) == 1, f"{len(offers)} answers to the good DISCOVER\n{lab.log()}"
    answered_to = {decode(r).xid for r in replies if r[:1] == b"\x02"}
    assert answered_to <= {xid}, f"a malformed datagram was answered\n{lab.log()}"
    lab.alive()
    drops = lab.full_log().count("dhcp: dropped") - before
    assert drops == sum(why.startswith("dropped:") for _, why in _malformed()), lab.log()
    for _, why in _malformed():
        if why.startswith("dropped:"):
            assert f": {why.removeprefix('dropped:')}" in lab.full_log(), (why, lab.log())
    assert "65507 bytes from" in lab.full_log(), lab.log()

    lab.new_mac()
    result = lab.client(["busybox", "udhcpc", "-i", lab.pair.client_if, "-n", "-q", "-t", "3",
                         "-T", "1", "-s", "/bin/true"], timeout=30)
    assert result.returncode == 0 and "obtained" in result.stderr, _output(result) + lab.log()


async def test_another_dhcp_server_is_detected(dhcp_lab: DhcpLab) -> None:
    """A forged OFFER from 10.9.9.9, broadcast to port 68 on the segment: the server hears it
    on its port-68 listener, logs a warning and records an event on the client's MAC."""
    lab = dhcp_lab
    rogue = IPv4Address("10.9.9.9")
    chaddr = bytes.fromhex("02ee00000001")
    offer = DhcpPacket(op=2, xid=0xBAD, chaddr=chaddr, yiaddr=IPv4Address("10.9.9.50"),
                       siaddr=rogue, flags=0x8000,
                       options={53: b"\x02", 54: rogue.packed, 51: (600).to_bytes(4, "big")})
    lab.probe((encode(offer), 68), wait=0.1)
    needle = f"another DHCP server {rogue} sent OFFER to 02:ee:00:00:00:01"

    async def logged() -> bool:
        return needle in lab.full_log()

    await _until(logged, "the rogue OFFER is logged", lab.log)
    store = SqliteStore(lab.data_dir / "store.db")
    try:
        inventory = Inventory(store)

        async def recorded() -> list[Any]:
            events = await inventory.list_events(MacAddress.from_bytes(chaddr))
            return [e for e in events if e.kind == "foreign_dhcp_server"]

        events = await _until(recorded, "a foreign_dhcp_server event", lab.log)
        assert events[0].detail == {"server": str(rogue), "message": "OFFER"}
    finally:
        await store.close()


def test_server_still_up_and_log_clean(dhcp_lab: DhcpLab) -> None:
    dhcp_lab.alive()
    log = dhcp_lab.full_log()
    assert "Traceback" not in log and "bug while answering" not in log, dhcp_lab.log()


# -- in process, over loopback ------------------------------------------------------------------

NETWORK = IPv4Network("10.77.0.0/24")
POOL = (IPv4Address("10.77.0.10"), IPv4Address("10.77.0.99"))


@dataclass
class Loopback:
    """A DhcpServer on `server_ip`:`port` and a relay agent socket on `relay`:67."""

    server: DhcpServer
    inventory: Inventory
    relay: IPv4Address
    port: int
    sock: socket.socket
    data_dir: Path

    @property
    def server_ip(self) -> IPv4Address:
        return self.server.server_ip

    def send(self, data: bytes, port: int | None = None) -> None:
        self.sock.sendto(data, (str(self.server_ip), port or self.port))

    async def reply(self, limit: float = 5.0) -> DhcpPacket:
        loop = asyncio.get_running_loop()
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), limit)
        except TimeoutError:
            pytest.fail(f"no reply within {limit:.0f} s; counters {dict(self.server.counters)}")
        assert source[0] == str(self.server_ip)
        return decode(data)

    def nothing_queued(self) -> None:
        try:
            data = self.sock.recv(70000)
        except BlockingIOError:
            return
        pytest.fail(f"unexpected reply {decode(data)}")

    async def counted(self, key: str, count: int = 1) -> None:
        """Wait until counter `key` reaches `count` (the packet has been decided)."""
        deadline = time.monotonic() + WAIT
        while self.server.counters[key] < count:
            if time.monotonic() > deadline:
                pytest.fail(f"counter {key} never reached {count}: {dict(self.server.counters)}")
            await asyncio.sleep(0.005)

    def request(self, mtype: int, mac: str, *, xid: int | None = None,
                giaddr: IPv4Address | None = None, ciaddr: IPv4Address = ZERO,
                **options: bytes) -> bytes:
        """A relayed BOOTREQUEST (giaddr = our relay) with option 53 `mtype` and `o<code>=`."""
        opts = {53: bytes((mtype,))}
        opts.update({int(k.removeprefix("o")): v for k, v in options.items()})
        chaddr = MacAddress(mac).packed
        return encode(DhcpPacket(op=1, xid=xid if xid is not None else secrets.randbits(32),
                                 chaddr=chaddr, giaddr=giaddr or self.relay, ciaddr=ciaddr,
                                 options=opts))


Factory = Callable[..., Awaitable[Loopback]]


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[Factory]:
    """Start DhcpServers with DhcpSettings overrides; a random 127.A.B.0/24 each, so runs and
    other tests on this host do not meet."""
    if os.geteuid() != 0:
        pytest.skip("the fake relay agent binds port 67 (root)")
    started: list[tuple[DhcpServer, Inventory, KeyValueStore, socket.socket]] = []

    async def start(*, store: str = "memory", **overrides: Any) -> Loopback:
        base = f"127.{1 + secrets.randbelow(254)}.{secrets.randbelow(256)}"
        server_ip, relay = f"{base}.1", IPv4Address(f"{base}.2")
        port = _free_udp_port(server_ip)
        subnet = SubnetSettings(network=str(NETWORK), routers=("10.77.0.1",),
                                pool_start=str(POOL[0]), pool_end=str(POOL[1]),
                                relay=str(relay))
        settings = replace(DhcpSettings(mode="full", listen=server_ip, port=port,
                                        server_ip=server_ip, subnets=(subnet,),
                                        detect_other_servers=False), **overrides)
        backend: KeyValueStore = (MemoryStore() if store == "memory"
                                  else SqliteStore(tmp_path / "store.db"))
        inventory = Inventory(backend)
        await inventory.start()
        server = DhcpServer(settings, inventory, boot_port=BOOT_PORT)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        started.append((server, inventory, backend, sock))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(relay), 67))
        sock.setblocking(False)
        await server.start()
        return Loopback(server, inventory, relay, port, sock, tmp_path)

    yield start
    for server, inventory, backend, sock in started:
        await server.close()
        await inventory.stop()
        await backend.close()
        sock.close()


DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
AGENT_INFO = b"\x01\x07sw1/p07\x02\x06\x00\x11\x22\x33\x44\x55"  # circuit-id, remote-id


async def test_malformed_datagrams_are_counted_by_reason(loopback: Factory) -> None:
    lab = await loopback()
    expected: dict[str, int] = {}
    for data, why in _malformed(giaddr=lab.relay):
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
    head = _bootp(xid=0xB16, giaddr=lab.relay) + MAGIC + b"\x35\x01\x01"
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
    assert listed.returncode == 0, _output(listed)
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
    await _until(lambda: _known(lab, "02:00:00:00:06:06"), "the node is in the cache",
                 lambda: "")
    lab.send(lab.request(DISCOVER, "02:00:00:00:06:06", **PXE_BIOS))
    assert (await lab.reply()).file == b"snponly.efi"


async def _known(lab: Loopback, mac: str) -> bool:
    return lab.inventory.node_by_mac(mac) is not None


async def _idle(lab: Loopback) -> None:
    """Wait until the server has no request in flight (its writes are done)."""
    deadline = time.monotonic() + WAIT
    while lab.server.in_flight:
        if time.monotonic() > deadline:
            pytest.fail(f"{lab.server.in_flight} requests still in flight")
        await asyncio.sleep(0.005)


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
        await _idle(lab)
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


def test_a_real_second_dhcp_server_is_detected(dhcp_lab: DhcpLab) -> None:
    """dnsmasq answering on the same segment (from the client namespace, broadcasting its
    OFFERs): the server hears them on port 68 and warns."""
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is not installed (Debian: dnsmasq-base)")
    lab = dhcp_lab
    net, rogue = lab.pair.network, lab.pair.client_ip
    out = lab.base / "dnsmasq.log"
    with out.open("w") as log:
        proc = lab.pair.spawn(lab.pair.client_ns, [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
            f"--interface={lab.pair.client_if}", f"--dhcp-range={net[200]},{net[210]},1h",
            "--dhcp-broadcast", "--no-ping", "--leasefile-ro", "--log-dhcp"], log=log)
    try:
        xid = secrets.randbits(32)
        deadline = time.monotonic() + WAIT
        needle = f"another DHCP server {rogue} sent OFFER"
        while needle not in lab.full_log():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"{out.read_text()}\n{lab.log()}"
            lab.probe(encode(discover(bytes.fromhex("02ee00000002"), xid)), wait=0.3)
    finally:
        lab.pair.stop(proc)
