"""The generator: the simulated nodes spread over worker processes in the client namespace,
told to start together, their progress merged into one line, their records collected.

Whatever the server is (the lab's appliance or bench/storm.py's baseline), the clients are
these: the same MACs, the same mix of BIOS and UEFI, the same stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from provisioner.lab.storm.network import CLIENT_IF, ClientNet
from provisioner.lab.storm.node import BootPlan
from provisioner.lab.storm.report import NodeRecord, progress_line

START_DELAY: Final = 1.0  # seconds for every worker to be up before the common start
PROGRESS_EVERY: Final = 1.0
MAC_BASE: Final = 0x52_54_01_00_00_00  # locally administered, apart from the QEMU nodes' 52:54:00


def storm_mac(index: int) -> str:
    raw = f"{MAC_BASE + index:012x}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


def arch_of(index: int, uefi_share: float) -> str:
    """Spread `uefi_share` of the nodes evenly through the indices."""
    return "uefi" if int((index + 1) * uefi_share) > int(index * uefi_share) else "bios"


@dataclass(frozen=True)
class SimSpec:
    mac: str
    arch: str


def node_specs(count: int, uefi_share: float) -> list[SimSpec]:
    return [SimSpec(storm_mac(i + 1), arch_of(i, uefi_share)) for i in range(count)]


@dataclass
class ClientRun:
    """What the workers gave back."""

    started: float
    records: list[NodeRecord]
    cpu_seconds: float


Say = Callable[[str], None]


async def run_clients(net: ClientNet, specs: list[SimSpec], plan: BootPlan, *, workers: int,
                      timeout: float, say: Say) -> ClientRun:
    """Boot `specs` with `workers` processes in `net`'s namespace; bounded by `timeout`."""
    shares = [specs[i::workers] for i in range(workers) if specs[i::workers]]
    started = time.monotonic() + START_DELAY
    procs = [await _spawn(net, share, plan, started) for share in shares]
    merged = _Merged(len(specs), started)
    try:
        readers = [asyncio.create_task(merged.read(p, n)) for n, p in enumerate(procs)]
        ticker = asyncio.create_task(merged.tick(say))
        try:
            await asyncio.wait_for(asyncio.gather(*readers), timeout)
        except TimeoutError:
            say(f"storm: stopped after {timeout:.0f} s; the nodes not ready count as failed")
        ticker.cancel()
        say(merged.line())
    finally:
        for proc in procs:
            _stop(proc)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    return ClientRun(started, merged.records(specs), merged.cpu)


async def _spawn(net: ClientNet, share: list[SimSpec], plan: BootPlan,
                 start_at: float) -> asyncio.subprocess.Process:
    orders = {"interface": CLIENT_IF, "start_at": start_at,
              "plan": {"control_only": plan.control_only, "etags": plan.etags},
              "nodes": [{"mac": s.mac, "arch": s.arch} for s in share]}
    proc = await asyncio.create_subprocess_exec(
        *net.command([sys.executable, "-m", "provisioner.lab.storm.worker"]),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        start_new_session=True, limit=1 << 20)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(orders).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    return proc


def _stop(proc: asyncio.subprocess.Process) -> None:
    """A worker still running (the run timed out) is killed with its group, by PID."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class _Merged:
    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.started = started
        self.stages: dict[int, dict[str, int]] = {}
        self.done: dict[str, NodeRecord] = {}
        self.cpu = 0.0

    async def read(self, proc: asyncio.subprocess.Process, worker: int) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self._take(worker, json.loads(line))

    def _take(self, worker: int, data: dict[str, Any]) -> None:
        if "progress" in data:
            self.stages[worker] = data["progress"]
        elif "record" in data:
            record = NodeRecord.from_dict(data["record"])
            self.done[record.mac] = record
        elif "cpu" in data:
            self.cpu += float(data["cpu"])

    def line(self) -> str:
        counts: dict[str, int] = {}
        for stages in self.stages.values():
            for stage, n in stages.items():
                counts[stage] = counts.get(stage, 0) + n
        ready = sum(1 for r in self.done.values() if r.ready)
        return progress_line(max(0.0, time.monotonic() - self.started), counts, ready,
                             self.total)

    async def tick(self, say: Say) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            say(self.line())

    def records(self, specs: list[SimSpec]) -> list[NodeRecord]:
        """Every node's record; one that never reported is failed, not left out."""
        return [self.done.get(s.mac) or NodeRecord(s.mac, s.arch, error="no result (timeout)")
                for s in specs]
