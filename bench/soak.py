"""Soak: the real appliance for a long time under simulated nodes that boot and are reimaged
in a loop; does its memory or its file descriptors grow?

    sudo .venv/bin/python bench/soak.py                       # 30 minutes, 8 nodes
    sudo .venv/bin/python bench/soak.py --minutes 5 --nodes 4 --interval 30

`provisioner serve` (sqlite store, DHCP in full mode, TFTP, the boot plane, the API) runs as a
child process in a network namespace this benchmark creates, where only the loopback exists:
DHCP listens on 127.0.0.1:67 and serves 10.77.0.0/24 through a relay at 10.77.0.2 (giaddr), and
all of 10.77.0.0/24 is a local address on the namespace's lo, so each simulated node can speak
from the address it was leased, as the boot plane requires. Each node, in a loop:

1. DHCP DORA, relayed: DISCOVER, OFFER, REQUEST, ACK (the relay socket is 10.77.0.2:67);
2. from its leased address: its iPXE script, then the kernel, the image and the overlay the
   script names; the one-boot token is read out of the overlay, as /init does;
3. the callback (`POST /node/v1/booted` with that token): the node is ready (handoff off);
4. the admin reimages it (`PATCH /api/v1/nodes/MAC {"state": "reimaging"}`), and it boots again.

Every `--interval` seconds one line: the appliance's RSS and open FDs (/proc/PID), the store's
size on disk (store.db and its -wal), its keys and boot events (a read-only sqlite count), and
the supervised task restarts /healthz reports. At the end: RSS and FD growth from the end of
the warm-up to the end of the run (medians of a quarter of the samples each), PASS when both
are under 5 % and no task restarted. The namespace and the process are removed by name and PID
at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import lzma
import os
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import ClassVar, cast

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402

from bench.api import mac_of, stop, wait_http  # noqa: E402
from bench.peers.testbed import unwinding  # noqa: E402
from provisioner.boot.overlay import TOKEN_PATH  # noqa: E402
from provisioner.config import load_settings  # noqa: E402
from provisioner.dhcp.packet import BROADCAST_FLAG, DhcpPacket, decode, encode  # noqa: E402
from provisioner.errors import MalformedPacket  # noqa: E402
from provisioner.images.format import cpio  # noqa: E402
from provisioner.images.format.catalog import ImageCatalog, describe_files  # noqa: E402
from provisioner.inventory import keys  # noqa: E402
from provisioner.inventory.repository import Inventory  # noqa: E402
from provisioner.lab.netns import Namespace  # noqa: E402
from provisioner.nodes.model import Node  # noqa: E402
from provisioner.security.tokens import ApiTokens, Role  # noqa: E402
from provisioner.store import open_store  # noqa: E402

SERVER, RELAY, NETWORK = "127.0.0.1", "10.77.0.2", "10.77.0.0/24"
API = f"http://{SERVER}:8080"
IMAGE = "soak"
WAIT = 10.0  # seconds any one answer may take
LIMIT = 5.0  # % of growth after warm-up that still passes
CONFIG = f"""
[dhcp]
mode = "full"
listen = "{SERVER}"
server_ip = "{SERVER}"
detect_other_servers = false
# each simulated node boots again at once, many times faster than a real one: lift its
# MAC's rate limit (limits.py) so the bench measures the appliance, not the limiter
mac_burst = 1000
mac_rate = 1000.0
[[dhcp.subnets]]
network = "{NETWORK}"
pool_start = "10.77.0.10"
pool_end = "10.77.0.250"
relay = "{RELAY}"
[tftp]
listen = "{SERVER}"
ipxe_dir = ""
[boot]
listen = "{SERVER}"
port = 80
[handoff]
kind = "none"
# bounds small enough for a run of minutes to reach them: the store's size then levels off
# where retention holds it (the defaults, 200 events a node and 100,000 audit entries, take
# hours of this loop to reach)
[retention]
events_per_node = 100
audit_records = 2000
interval = 30.0
"""
SCRIPT_URL = re.compile(r"^set prov-(kernel|image|overlay) (\S+)$", re.M)


# -- the appliance ----------------------------------------------------------------------------


def stage(work: Path, nodes: int) -> tuple[Path, str]:
    """The config, a published image, the nodes and an admin token, before the appliance
    starts. Returns (config file, bearer token)."""
    config = work / "provisioner.toml"
    config.write_text(CONFIG)
    settings = load_settings(config, env={"PROVISIONER_DATA_DIR": str(work / "data")})
    catalog = ImageCatalog(settings.images_dir)
    staging = catalog.new_staging(IMAGE)
    (staging / "vmlinuz").write_bytes(os.urandom(256 * 1024))
    (staging / "image.cpio.xz").write_bytes(os.urandom(1024 * 1024))
    (staging / "manifest.json").write_text(json.dumps({"files": describe_files(staging)}))
    catalog.publish(staging, IMAGE, activate=True)

    async def write() -> str:
        store = open_store(settings)
        try:
            inventory = Inventory(store)
            for i in range(nodes):
                await inventory.add_node(Node(mac_of(i), f"soak{i:03d}", image=IMAGE))
            return (await ApiTokens(store).create(Role.ADMIN, "soak", time.time()))[1]
        finally:
            await store.close()

    return config, asyncio.run(write())


@dataclass
class Probe:
    """What one line reports, read from /proc, the store's files and /healthz."""

    pid: int
    store: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def store_bytes(self) -> int:
        files = (self.store, self.store.with_name(self.store.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    def counts(self) -> tuple[int, int]:
        """(keys, boot events): a read-only count, cheap next to a minute of boots."""
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=5) as db:
            total = db.execute("SELECT count(*) FROM kv").fetchone()[0]
            events = db.execute("SELECT count(*) FROM kv WHERE key >= ? AND key < ?",
                                (keys.EVENTS, keys.EVENTS[:-1] + "0")).fetchone()[0]
        return int(total), int(events)


# -- the nodes ---------------------------------------------------------------------------------


class Relay(asyncio.DatagramProtocol):
    """The relay agent every node's DHCP goes through: replies come back here, by xid."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[DhcpPacket]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            reply = decode(data)
        except MalformedPacket:
            return
        future = self.waiting.pop(reply.xid, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def ask(self, request: DhcpPacket) -> DhcpPacket:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting[request.xid] = future
        self.transport.sendto(encode(request), (SERVER, 67))
        try:
            return await asyncio.wait_for(future, WAIT)
        finally:
            self.waiting.pop(request.xid, None)


@dataclass
class Tally:
    boots: int = 0
    reimages: int = 0
    failures: int = 0
    last_failure: str = ""
    seconds: list[float] = field(default_factory=list)

    def failed(self, what: str) -> None:
        self.failures += 1
        self.last_failure = what[:200]


def _request(message: bytes, mac: bytes, **options: bytes) -> DhcpPacket:
    """A relayed request from a PXE ROM (BIOS): the reply goes to the relay (giaddr)."""
    pxe = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00"}
    return DhcpPacket(op=1, xid=secrets.randbits(32), chaddr=mac, flags=BROADCAST_FLAG,
                      giaddr=IPv4Address(RELAY), options={53: message, **pxe,
                                                          **{int(k[1:]): v for k, v in
                                                             options.items()}})


async def lease(relay: Relay, mac: bytes) -> IPv4Address:
    offer = await relay.ask(_request(b"\x01", mac))
    server = offer.options.get(54, IPv4Address(SERVER).packed)
    ack = await relay.ask(_request(b"\x03", mac, o50=offer.yiaddr.packed, o54=server))
    if ack.message_type != 5:
        raise RuntimeError(f"REQUEST for {offer.yiaddr} got message {ack.message_type}")
    return ack.yiaddr


async def boot_once(relay: Relay, i: int, admin: str) -> None:
    """One boot of node `i`, then its reimage (see the module docstring)."""
    mac = mac_of(i)
    ip = await lease(relay, mac.packed)
    transport = httpx.AsyncHTTPTransport(local_address=str(ip))
    async with httpx.AsyncClient(transport=transport, timeout=WAIT) as node:
        script = await _ok(node.get(f"http://{SERVER}/boot/{mac.value}.ipxe"))
        urls = dict(SCRIPT_URL.findall(script.text))
        if set(urls) != {"kernel", "image", "overlay"}:
            raise RuntimeError(f"script without the three URLs: {script.text[:200]!r}")
        for what in ("kernel", "image"):
            await _ok(node.get(urls[what]))
        overlay = await _ok(node.get(urls["overlay"]))
        token = _token(overlay.content)
        await _ok(node.post(f"{API}/node/v1/booted", json={
            "mac": mac.value, "token": token, "image": IMAGE, "version": "1"}))
    async with httpx.AsyncClient(timeout=WAIT, headers={"Authorization": f"Bearer {admin}"}) \
            as api:
        await _ok(api.patch(f"{API}/api/v1/nodes/{mac.value}", json={"state": "reimaging"}))


async def _ok(request: Awaitable[httpx.Response]) -> httpx.Response:
    answer = await request
    if answer.status_code != 200:
        raise RuntimeError(f"{answer.request.method} {answer.request.url}: "
                           f"{answer.status_code} {answer.text[:120]!r}")
    return answer


def _token(overlay: bytes) -> str:
    decompressor = lzma.LZMADecompressor()
    entries = cpio.unpack(decompressor.decompress(overlay))
    entries += cpio.unpack(decompressor.unused_data.lstrip(b"\0"))
    return next(e.data for e in entries if e.path == TOKEN_PATH).decode()


@dataclass
class Pause:
    """Stops the nodes between two boots while a sample is taken, so that the FDs counted are
    the appliance's own, not the connections of the requests under way at that instant."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    busy: int = 0
    QUIET: ClassVar[float] = 0.5  # seconds for the server to close the last connections

    async def sampled(self, take: Callable[[], Awaitable[Sample]]) -> Sample:
        self.go.clear()
        deadline = time.monotonic() + 3 * WAIT
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.QUIET)
        try:
            return await take()
        finally:
            self.go.set()


async def node_loop(relay: Relay, i: int, admin: str, until: float, tally: Tally, *,
                    pause: Pause) -> None:
    while time.monotonic() < until:
        await pause.go.wait()
        started = time.monotonic()
        pause.busy += 1
        try:
            await boot_once(relay, i, admin)
        except (RuntimeError, httpx.HTTPError, TimeoutError, OSError) as exc:
            tally.failed(f"node {i}: {exc!r}")
            await asyncio.sleep(1)
            continue
        finally:
            pause.busy -= 1
        tally.boots += 1
        tally.reimages += 1
        tally.seconds.append(time.monotonic() - started)


# -- the figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the nodes started
    rss_kib: int
    fds: int
    store_bytes: int
    keys: int
    events: int
    restarts: int


async def sample(probe: Probe, at: float) -> Sample:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        health = await client.get(f"{API}/healthz")
    restarts = sum(t.get("restarts", 0) for t in health.json().get("tasks", []))
    if health.status_code != 200:
        restarts = max(restarts, 1)  # a task is down right now: that is a restart under way
    total, events = probe.counts()
    return Sample(at, probe.rss_kib(), probe.fds(), probe.store_bytes(), total, events,
                  restarts)


def line(s: Sample, tally: Tally) -> str:
    return (f"{s.at / 60:6.1f} min  boots {tally.boots:6d}  failed {tally.failures:4d}  "
            f"rss {s.rss_kib / 1024:7.1f} MiB  fds {s.fds:4d}  "
            f"store {s.store_bytes / 2**20:7.2f} MiB  keys {s.keys:7d}  events {s.events:7d}  "
            f"restarts {s.restarts}")


def growth(before: float, after: float) -> float:
    return (after - before) / before * 100 if before else 0.0


def verdict(samples: list[Sample], warmup: float) -> tuple[str, bool]:
    """RSS and FD growth after the warm-up: the median of the last quarter of the samples
    taken after it against the median of its first quarter. Medians, because the FDs include
    the connections open at that instant, which come and go with the nodes' requests."""
    after = [s for s in samples if s.at >= warmup] or samples[-1:]
    window = max(1, len(after) // 4)
    first, last = after[:window], after[-window:]
    rss = [statistics.median(s.rss_kib for s in part) for part in (first, last)]
    fds = [statistics.median(s.fds for s in part) for part in (first, last)]
    rss_growth, fd_growth = growth(rss[0], rss[1]), growth(fds[0], fds[1])
    restarts = samples[-1].restarts
    ok = rss_growth < LIMIT and fd_growth < LIMIT and restarts == 0
    return (f"after warm-up ({after[0].at / 60:.1f} to {after[-1].at / 60:.1f} min, medians "
            f"of {window} sample(s)): RSS {rss[0] / 1024:.1f} -> {rss[1] / 1024:.1f} MiB "
            f"({rss_growth:+.1f} %), FDs {fds[0]:g} -> {fds[1]:g} ({fd_growth:+.1f} %), "
            f"restarts {restarts}; {'PASS' if ok else 'FAIL'} (< {LIMIT:g} % each, no restart)"
            ), ok


async def drive(args: argparse.Namespace, probe: Probe, admin: str,
                process: subprocess.Popen[bytes], log: Path) -> tuple[list[Sample], Tally]:
    await wait_http(f"{API}/healthz", process, log)
    relay = Relay()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: relay, local_addr=(RELAY, 67))
    tally, samples = Tally(), []
    start = time.monotonic()
    until = start + args.duration
    pause = Pause()
    pause.go.set()
    nodes = [asyncio.create_task(node_loop(relay, i, admin, until, tally, pause=pause))
             for i in range(args.nodes)]
    try:
        while (now := time.monotonic()) < until:
            await asyncio.sleep(min(args.interval, until - now))
            samples.append(await pause.sampled(lambda: sample(probe, time.monotonic() - start)))
            print(line(samples[-1], tally), flush=True)
            if process.poll() is not None:
                raise RuntimeError(f"the appliance ended: {log.read_text()[-2000:]}")
        await asyncio.gather(*nodes)
    finally:
        for task in nodes:
            task.cancel()
        transport.close()
    return samples, tally


def run(args: argparse.Namespace, work: Path) -> bool:
    netns = f"pv-soak-{secrets.token_hex(3)}"
    config, admin = stage(work, args.nodes)
    settings = load_settings(config, env={"PROVISIONER_DATA_DIR": str(work / "data")})
    log = work / "serve.log"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    process: subprocess.Popen[bytes] | None = None
    namespace: Namespace | None = None
    try:
        for argv in (["link", "set", "lo", "up"], ["addr", "add", "10.77.0.1/24", "dev", "lo"]):
            subprocess.run(["ip", "-n", netns, *argv], check=True, timeout=30)
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "provisioner", "serve",
                 "--listen", SERVER, "--port", "8080",
                 "--log-level", "warning"],
                env={**os.environ, "PROVISIONER_CONFIG": str(config),
                     "PROVISIONER_DATA_DIR": str(work / "data")}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        probe = Probe(process.pid, settings.store_path)
        namespace = Namespace(netns)
        print(f"soak: {args.nodes} nodes for {args.duration / 60:.1f} min, appliance PID "
              f"{process.pid}, sqlite store {settings.store_path}", flush=True)
        samples, tally = namespace.run(lambda: drive(args, probe, admin, process, log),
                                       timeout=args.duration + 120)
    finally:
        if process is not None:
            stop(process)
        if namespace is not None:
            namespace.close()
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=30)
    mean = sum(tally.seconds) / len(tally.seconds) if tally.seconds else 0.0
    print(f"boots {tally.boots} (mean {mean:.2f} s each, with their reimage), failed "
          f"{tally.failures}{': last ' + tally.last_failure if tally.failures else ''}")
    if not samples:
        print("no sample: run longer than --interval")
        return False
    text, ok = verdict(samples, args.warmup)
    print(text, flush=True)
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--seconds", type=float, help="how long, in seconds (overrides)")
    parser.add_argument("--nodes", type=int, default=8, help="simulated nodes (default 8)")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between two lines (default 60)")
    parser.add_argument("--warmup", type=float,
                        help="seconds before the baseline sample (default: a third of the run, "
                             "5 minutes at most)")
    args = parser.parse_args(argv)
    args.duration = args.seconds if args.seconds is not None else args.minutes * 60
    if args.warmup is None:
        args.warmup = min(300.0, args.duration / 3)
    if os.geteuid() != 0:
        parser.error("needs root (it creates a network namespace)")
    with unwinding(), tempfile.TemporaryDirectory(prefix="soak-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
