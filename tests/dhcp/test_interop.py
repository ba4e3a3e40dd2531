"""The DHCP server against real clients and hand-made datagrams.

Root (network namespaces; port 67).

- Across a veth between two network namespaces (`dhcp_lab`, tests/dhcp/conftest.py): busybox
  udhcpc gets an address, renews it (SIGUSR1, unicast from the address it configured) and
  releases it (SIGUSR2); ISC dhclient gets an address, gets it again from INIT-REBOOT with its
  lease file, and releases it; Kea's perfdhcp, acting as a relay agent, completes DORA
  exchanges; malformed datagrams are dropped (one debug line each, by reason) and the next
  client is answered; another DHCP server (a forged OFFER, then a real dnsmasq) is detected on
  port 68, logged and recorded as an event.
- In process, over loopback: tests/dhcp/test_loopback.py.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from provisioner.dhcp.packet import DhcpPacket, decode, encode
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Lease, MacAddress
from provisioner.store.sqlite import SqliteStore
from tests.dhcp.conftest import DhcpLab, discover
from tests.dhcp.loopback import WAIT, malformed, output, until

pytestmark = pytest.mark.netns






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
        ip = await until(lambda: bound("bound"), "udhcpc bound", detail)
        first, last = lab.pool
        assert first <= IPv4Address(ip) <= last, detail()
        lease = await until(lambda: _lease_of(lab, mac), "lease stored", detail)
        assert (str(lease.ip), lease.state) == (ip, "bound"), detail()

        os.kill(proc.pid, signal.SIGUSR1)  # renew: a unicast REQUEST from ip to the server
        renewed = await until(lambda: bound("renew"), "udhcpc renewed", detail)
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
        await until(lambda: _logged(lab, rf"xid {rebind_xid:08x} .*REBINDING"),
                     "the broadcast REQUEST logged as REBINDING", detail)

        os.kill(proc.pid, signal.SIGUSR2)  # release

        async def released() -> bool:
            now = await _lease_of(lab, mac)
            return now is not None and now.state == "released"

        await until(released, "lease released in the store", detail)
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
        assert first.returncode == 0, output(first) + lab.log()
        got = re.search(r"DHCPACK of (\S+) from", first.stderr)
        assert got and "DHCPDISCOVER" in first.stderr, output(first)
        ip = got.group(1)
        lease = await _lease_of(lab, mac)
        assert lease is not None and (str(lease.ip), lease.state) == (ip, "bound"), lab.log()
        stop = lab.client(["dhclient", "-x", *common, lab.pair.client_if])  # no release
        assert stop.returncode == 0, output(stop)

        # The lease file is still valid: dhclient starts in INIT-REBOOT (REQUEST, no DISCOVER).
        again = lab.client(["dhclient", "-1", *common, lab.pair.client_if])
        assert again.returncode == 0, output(again) + lab.log()
        assert "DHCPDISCOVER" not in again.stderr, output(again)
        assert f"DHCPREQUEST for {ip}" in again.stderr, output(again)
        assert f"DHCPACK of {ip}" in again.stderr, output(again)
        assert re.search(rf"3 from {mac} .*state=<RequestState.INIT_REBOOT",
                         lab.full_log()), lab.log()

        release = lab.client(["dhclient", "-r", *common, lab.pair.client_if])
        assert release.returncode == 0, output(release)
        assert f"DHCPRELEASE of {ip}" in release.stderr, output(release)

        async def released() -> bool:
            now = await _lease_of(lab, mac)
            return now is not None and now.state == "released"

        await until(released, "lease released in the store", lab.log)
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




async def test_malformed_datagrams_are_dropped_then_udhcpc_is_answered(dhcp_lab: DhcpLab) -> None:
    lab = dhcp_lab
    before = lab.full_log().count("dhcp: dropped")
    xid = secrets.randbits(32)
    good = encode(discover(bytes.fromhex("02aabbccdd02"), xid))
    replies = lab.probe(*(data for data, _ in malformed()), good, wait=1.0)
    offers = lab.offers(replies, xid)
    assert len(offers) == 1, f"{len(offers)} answers to the good DISCOVER\n{lab.log()}"
    answered_to = {decode(r).xid for r in replies if r[:1] == b"\x02"}
    assert answered_to <= {xid}, f"a malformed datagram was answered\n{lab.log()}"
    lab.alive()
    drops = lab.full_log().count("dhcp: dropped") - before
    assert drops == sum(why.startswith("dropped:") for _, why in malformed()), lab.log()
    for _, why in malformed():
        if why.startswith("dropped:"):
            assert f": {why.removeprefix('dropped:')}" in lab.full_log(), (why, lab.log())
    assert "65507 bytes from" in lab.full_log(), lab.log()

    lab.new_mac()
    result = lab.client(["busybox", "udhcpc", "-i", lab.pair.client_if, "-n", "-q", "-t", "3",
                         "-T", "1", "-s", "/bin/true"], timeout=30)
    assert result.returncode == 0 and "obtained" in result.stderr, output(result) + lab.log()


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

    await until(logged, "the rogue OFFER is logged", lab.log)
    store = SqliteStore(lab.data_dir / "store.db")
    try:
        inventory = Inventory(store)

        async def recorded() -> list[Any]:
            events = await inventory.list_events(MacAddress.from_bytes(chaddr))
            return [e for e in events if e.kind == "foreign_dhcp_server"]

        events = await until(recorded, "a foreign_dhcp_server event", lab.log)
        assert events[0].detail == {"server": str(rogue), "message": "OFFER"}
    finally:
        await store.close()


def test_server_still_up_and_log_clean(dhcp_lab: DhcpLab) -> None:
    dhcp_lab.alive()
    log = dhcp_lab.full_log()
    assert "Traceback" not in log and "bug while answering" not in log, dhcp_lab.log()


# -- in process, over loopback ------------------------------------------------------------------


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
