"""A real Prometheus scrapes a real appliance while simulated nodes boot through its real
planes, and what it reads through its query API matches what the test drove.

The appliance is the fuzz bed's (tests/fuzz/bed.py: every plane as `provisioner serve` runs
them, in a network namespace the bed creates, on its loopback). Each node walks the boot as
firmware, iPXE and the booted init would: a relayed DHCP DISCOVER and REQUEST (the replies
come back to the relay address), its iPXE script, the kernel and the image, its overlay (with
its one-boot token) and the boot callback, all from its own address; the handoff is off, so
the callback makes it ready. Prometheus runs in the same namespace (tests/support/prometheus.py).
"""

from __future__ import annotations

import lzma
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest

from provisioner.boot.overlay import TOKEN_PATH
from provisioner.dhcp.packet import BROADCAST_FLAG, DhcpPacket, decode, encode
from provisioner.images.format import cpio
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.tftp.packet import Mode, Opcode, encode_request
from tests.fuzz.bed import (
    API_PORT,
    BOOT_PORT,
    DHCP_PORT,
    IMAGE,
    RELAY,
    SERVER,
    TFTP_FILE,
    TFTP_PORT,
    FuzzBed,
)
from tests.support.prometheus import PrometheusServer

pytestmark = pytest.mark.netns
#: nodes booted by the short run (CI) and by the full one (PROVISIONER_FULL=1), and the first
#: node number of each, so that both can run on one bed
SIZES = [pytest.param(3, 0, id="short"), pytest.param(40, 100, id="full", marks=pytest.mark.full)]
WAIT = 10.0
STAGES = ("dhcp", "script", "kernel_image", "callback", "handoff", "ready")
PXE = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00"}


def _mac(n: int) -> MacAddress:
    return MacAddress(f"52:54:00:f3:{n >> 8:02x}:{n & 0xFF:02x}")


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzBed]:
    bed = FuzzBed(tmp_path_factory.mktemp("metrics-bed")).start()
    try:
        yield bed
    finally:
        bed.stop()


async def _add_nodes(bed: FuzzBed, numbers: range) -> None:
    assert bed.appliance is not None
    inventory = bed.appliance.inventory
    for n in numbers:
        revision = await inventory.add_node(Node(_mac(n), f"metrics-{n}", image=IMAGE))
        await inventory.settle(revision)


def _packet(message: int, xid: int, mac: MacAddress, **options: bytes) -> bytes:
    opts = {53: bytes([message]), **PXE, **{int(k[1:]): v for k, v in options.items()}}
    return encode(DhcpPacket(op=1, xid=xid, chaddr=mac.packed, flags=BROADCAST_FLAG,
                             giaddr=IPv4Address(RELAY), options=opts))


def _dhcp(mac: MacAddress, xid: int) -> DhcpPacket:
    """DISCOVER then REQUEST through the relay address; the ACK (RFC 2131 section 3.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
        relay.bind((RELAY, DHCP_PORT))
        relay.settimeout(WAIT)
        relay.sendto(_packet(1, xid, mac), (SERVER, DHCP_PORT))
        offer = decode(relay.recv(70000))
        relay.sendto(_packet(3, xid, mac, o54=IPv4Address(SERVER).packed,
                             o50=offer.yiaddr.packed), (SERVER, DHCP_PORT))
        return decode(relay.recv(70000))


def _token(overlay: bytes) -> str:
    """The token the overlay carries: the cached xz part, then the uncompressed token cpio."""
    decompressor = lzma.LZMADecompressor()
    first = decompressor.decompress(overlay)
    entries = cpio.unpack(first) + cpio.unpack(decompressor.unused_data.lstrip(b"\0"))
    return next(e.data.decode() for e in entries if e.path == TOKEN_PATH)


def _boot_files(n: int, ip: str) -> tuple[int, str]:
    """Script, kernel, image and overlay from the node's own address: (bytes, token)."""
    transport = httpx.HTTPTransport(local_address=ip)
    with httpx.Client(base_url=f"http://{SERVER}:{BOOT_PORT}", transport=transport,
                      timeout=WAIT) as node:
        script = node.get(f"/boot/{_mac(n).value}.ipxe")
        assert script.status_code == 200, script.text
        files = [node.get(f"/boot/images/{IMAGE}/1/{name}")
                 for name in ("vmlinuz", "image.cpio.xz")]
        assert all(f.status_code == 200 for f in files)
        overlay = node.get(f"/boot/nodes/{_mac(n).value}/overlay.cpio.xz")
        assert overlay.status_code == 200, overlay.text
    return sum(len(f.content) for f in files), _token(overlay.content)


def _call_back(n: int, ip: str, token: str) -> httpx.Response:
    body = {"mac": _mac(n).value, "token": token, "image": IMAGE, "version": "1",
            "facts": {"cpus": 1, "memory_mib": 256}}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ip)) as node:
        return node.post(f"http://{SERVER}:{API_PORT}/node/v1/booted", json=body,
                         timeout=WAIT)


def _acked_recorded(bed: FuzzBed, mac: MacAddress) -> None:
    """The ACK's event is written in the background: wait for it, so the script comes after
    it on the timeline as it does on a real node."""
    async def kinds() -> list[str]:
        assert bed.appliance is not None
        return [e.kind for e in await bed.appliance.inventory.list_events(mac)]
    deadline = time.monotonic() + WAIT
    while "dhcp_acked" not in bed.on_loop(kinds):
        assert time.monotonic() < deadline, bed.on_loop(kinds)
        time.sleep(0.05)


def _boot(bed: FuzzBed, n: int) -> int:
    ack = bed.inside(lambda: _dhcp(_mac(n), 0x4D00 + n))
    assert ack.options.get(53) == b"\x05", ack  # DHCPACK
    ip = str(ack.yiaddr)  # the node's address from now on: on the namespace's lo
    subprocess.run(["ip", "-n", bed.netns, "addr", "add", f"{ip}/32", "dev", "lo"], check=True,
                   timeout=30)
    _acked_recorded(bed, _mac(n))
    sent, token = bed.inside(lambda: _boot_files(n, ip))
    answer = bed.inside(lambda: _call_back(n, ip, token))
    assert answer.status_code == 200 and answer.json()["state"] == NodeState.READY, answer.text
    return sent


def _tftp_fetch() -> int:
    """The bed's TFTP file in 512-byte blocks (RFC 1350 section 6): bytes received."""
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.sendto(encode_request(Opcode.RRQ, TFTP_FILE, Mode.OCTET), (SERVER, TFTP_PORT))
        for _ in range(1000):  # 70,000 bytes: 137 blocks
            data, sender = client.recvfrom(70000)
            assert data[:2] == b"\x00\x03", data[:80]  # DATA
            received += len(data) - 4
            client.sendto(b"\x00\x04" + data[2:4], sender)  # ACK from the transfer's port
            if len(data) - 4 < 512:
                return received
    raise AssertionError("the TFTP transfer did not end")


def _count(prom: PrometheusServer, stage: str) -> float:
    value = prom.value(f'provisioner_boot_stage_seconds_count{{stage="{stage}"}}')
    return value or 0.0


@pytest.mark.parametrize(("nodes", "first"), SIZES)
def test_prometheus_sees_the_boots_the_test_drove(bed: FuzzBed, tmp_path: Path, nodes: int,
                                                  first: int) -> None:
    numbers = range(first, first + nodes)
    bed.on_loop(lambda: _add_nodes(bed, numbers))
    target = f"{SERVER}:{API_PORT}"
    files = 'sum(provisioner_http_bytes_total{kind=~"kernel|image"})'
    with PrometheusServer([target], tmp_path / "prometheus", netns=bed.netns) as prom:
        prom.wait_for(f'up{{instance="{target}"}}', lambda v: v == 1)
        before = {stage: _count(prom, stage) for stage in STAGES}
        ready, files_before = (prom.value('provisioner_nodes{state="ready"}') or 0.0,
                               prom.value(files) or 0.0)
        started = time.monotonic()
        sent = sum(_boot(bed, n) for n in numbers)
        print(f"{nodes} simulated boots in {time.monotonic() - started:.2f} s")
        prom.wait_for('provisioner_nodes{state="ready"}', lambda v: v == ready + nodes)
        for stage in STAGES:
            prom.wait_for(f'provisioner_boot_stage_seconds_count{{stage="{stage}"}}',
                          lambda v, s=stage: v == before[s] + nodes)  # type: ignore[misc]
        served = prom.wait_for(files, lambda v: v == files_before + sent) - files_before
        tftp_before = prom.value('provisioner_tftp_bytes_total{kind="other"}') or 0.0
        fetched = bed.inside(_tftp_fetch)
        prom.wait_for('provisioner_tftp_bytes_total{kind="other"}',
                      lambda v: v == tftp_before + fetched)
        acks = prom.wait_for('provisioner_dhcp_replies_total{type="ack"}',
                             lambda v: v >= nodes)
        # over the process's whole life (a rate over so few scrapes may be empty)
        p95 = prom.query('histogram_quantile(0.95, sum by (le, stage) '
                         '(provisioner_boot_stage_seconds_bucket))')
        print(f"served {served:.0f} kernel+image bytes, {acks:.0f} ACKs; p95 by stage: "
              + ", ".join(f"{r['metric']['stage']}={r['value'][1]}" for r in p95))
        assert (prom.value("sum(provisioner_store_op_seconds_count)") or 0) > 0
        assert prom.value('provisioner_task_up{task="lifecycle sweeper"}') == 1
