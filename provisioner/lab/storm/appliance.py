"""`provisioner lab storm`: a lab of its own (namespace, bridge, appliance, scheduler), an image
of the asked size, N nodes registered through the API as an admin would, then the storm from
the client namespace, and the report. Everything it started is removed at the end, by PID and
by namespace, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from provisioner.errors import ConfigError
from provisioner.images.format.catalog import ImageCatalog
from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.storm.clients import ClientRun, SimSpec, node_specs, run_clients
from provisioner.lab.storm.network import ClientNet, rate_bits
from provisioner.lab.storm.node import BootPlan
from provisioner.lab.storm.report import HeadUsage, StormReport
from provisioner.lab.storm.transfers import http

IMAGE: Final = "storm"
KERNEL_SIZE: Final = 4 << 20
REGISTER_AT_ONCE: Final = 16
_SIZE: Final = re.compile(r"(\d+)\s*([kmg]?)(i?b?)", re.I)
Say = Callable[[str], None]
#: wraps the measured storm once the appliance answers, before the lab goes down: it gets the
#: lab and the storm to run, returns its report (a test watches the appliance from inside)
Around = Callable[[Lab, Callable[[], StormReport]], StormReport]


def parse_size(text: str) -> int:
    """Bytes of "64M", "512k", "1G" (powers of 1024) or a plain number."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ConfigError(f"--image-size {text!r}: give a size such as 64M or 512k")
    return int(found[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[found[2].lower()]


def pool_size(nodes: int) -> int:
    """Twice the nodes, and some: a server that does not hold an offered address (dnsmasq)
    offers one free address to several nodes at once, and NAKs all but one of them; a pool
    barely larger than the storm turns its end into a loop of NAKs. Both sides get this."""
    return 2 * nodes + 16


@dataclass(frozen=True)
class StormOptions:
    nodes: int
    link: str = ""  # a tc rate for the head's side ("1gbit"); empty: unshaped
    loss: float = 0.0  # percent of packets dropped each way
    image_size: int = 16 << 20
    control_only: bool = False
    workers: int = 4
    uefi_share: float = 0.5
    timeout: float = 900.0
    address: str = "10.97.0.1/16"  # the server's address; the subnet holds every node

    def __post_init__(self) -> None:
        if self.link:
            rate_bits(self.link)  # a rate tc cannot read is refused before any lab is made


def write_image(images: Path, image_size: int, kernel_size: int = KERNEL_SIZE) -> dict[str, str]:
    """The storm's image in a catalog: a kernel and an image of the asked sizes (their bytes
    only need to arrive, never to boot). Returns the ETags the boot plane will send."""
    work = images / ".storm-input"
    work.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    for name, size in (("vmlinuz", kernel_size), ("image", image_size)):
        with (work / name).open("wb") as out:
            for offset in range(0, size, len(block)):
                out.write(block[:min(len(block), size - offset)])
    try:
        version = ImageCatalog(images).import_pair(IMAGE, work / "vmlinuz", work / "image",
                                                   activate=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {f: f'"{meta["sha256"]}"' for f, meta in version.manifest["files"].items()}


def head_usage(pid: int) -> HeadUsage:
    """CPU seconds (user + system, /proc/PID/stat fields 14-15) and memory of `pid`."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)

    def kib(key: str) -> int:
        return int(status.get(key, "0 kB").split()[0]) * 1024

    return HeadUsage(ticks / os.sysconf("SC_CLK_TCK"), kib("VmRSS"), kib("VmHWM"))


async def register(lab: Lab, specs: list[SimSpec]) -> None:
    """Each node created with POST /api/v1/nodes, REGISTER_AT_ONCE at a time."""
    gate = asyncio.Semaphore(REGISTER_AT_ONCE)
    headers = {"Authorization": f"Bearer {lab.state.admin_token}",
               "Content-Type": "application/json"}

    async def one(index: int, spec: SimSpec) -> None:
        body = json.dumps({"mac": spec.mac, "name": f"storm{index:05}", "firmware": spec.arch,
                           "settings": {"power_driver": "manual"}}).encode()
        async with gate:
            answer = await http("POST", f"{lab.state.api_url}/api/v1/nodes",
                                source=lab.network.server_ip, headers=headers, body=body)
        if answer.status not in (200, 201):
            raise ConfigError(f"registering {spec.mac}: HTTP {answer.status} "
                              f"{answer.body[:300]!r}")

    await asyncio.gather(*(one(i + 1, s) for i, s in enumerate(specs)))


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the storm runs, so a stopped storm still takes
    down its lab, its workers and its namespaces (the `finally` clauses run)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def storm(options: StormOptions, root: Path, *, say: Say = print,
          around: Around | None = None) -> StormReport:
    """The whole storm against a fresh lab under `root` (removed and made again)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    say(f"storm: an image of {options.image_size >> 20} MiB, a lab for {options.nodes} nodes")
    etags = write_image(root / "images", options.image_size)
    lab = Lab.create(LabOptions(root / "lab", namespace=f"pv-storm-{secrets.token_hex(3)}",
                                address=options.address, images=root / "images", image=IMAGE,
                                discovery=False, pool_size=pool_size(options.nodes)),
                     say=say)
    net = ClientNet(lab.state.namespace, lab.state.bridge, lab.network.subnet)
    try:
        net.create()
        net.impair(options.link, options.loss)
        specs = node_specs(options.nodes, options.uefi_share)
        began = time.monotonic()
        lab.ns.run(lambda: register(lab, specs), timeout=600)
        say(f"storm: {len(specs)} nodes registered in {time.monotonic() - began:.1f} s; go")
        plan = BootPlan(options.control_only, etags)

        def measure() -> StormReport:
            return _measure(lab, net, specs, plan, options=options, say=say)

        return around(lab, measure) if around is not None else measure()
    finally:
        net.close()
        lab.down(say=lambda _: None)


def _measure(lab: Lab, net: ClientNet, specs: list[SimSpec], plan: BootPlan, *,
             options: StormOptions, say: Say) -> StormReport:
    proc = lab.state.proc("appliance")
    assert proc is not None
    before = head_usage(proc.pid)
    run: ClientRun = asyncio.run(run_clients(net, specs, plan, workers=options.workers,
                                             timeout=options.timeout, say=say))
    after = head_usage(proc.pid)
    head = HeadUsage(after.cpu_seconds - before.cpu_seconds, after.rss_bytes,
                     after.peak_rss_bytes)
    return StormReport(options.nodes, run.started, run.records, head, run.cpu_seconds,
                       settings=asdict(options))
