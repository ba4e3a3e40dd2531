"""A storm worker: one process, run inside the client namespace (`ip netns exec NS python -m
provisioner.lab.storm.worker`), booting its share of the simulated nodes on one asyncio loop.

It reads its orders as one JSON object on stdin (interface, nodes, plan, when to start) and
writes JSON lines on stdout: a progress count of its nodes per stage every PROGRESS_EVERY
seconds, one record per node as it finishes, and at the end its own CPU time, so a reader can
tell whether the generator, not the server, was the limit.

Leased addresses are added to the interface in batches (`ip -batch`: one process for many
addresses, instead of one `ip addr add` each), `noprefixroute` since the run adds the subnet's
route once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any, Final

from provisioner.lab.storm.node import BootPlan, SimNode
from provisioner.lab.storm.rawdhcp import RawDhcp
from provisioner.lab.storm.report import NodeRecord

PROGRESS_EVERY: Final = 0.5
BATCH_EVERY: Final = 0.02


class AddressBook:
    """Adds addresses to `interface` in batches; `add` returns once its address is usable."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, ip: str, prefix: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((f"addr add {ip}/{prefix} dev {self.interface} noprefixroute",
                              done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        """Batches until none is pending: an address added during a batch goes in the next."""
        while self._pending:
            await asyncio.sleep(BATCH_EVERY)  # let the others leased meanwhile join the batch
            batch, self._pending = self._pending, []
            await self._add(batch)

    async def _add(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        """One `ip -batch` for the batch; every waiter gets its answer, even if ip fails."""
        problem = ""
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "-force", "-batch", "-", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            # -force: go on past an address already there (a second lease of the same one)
            _, errors = await proc.communicate(
                "".join(f"{line}\n" for line, _ in batch).encode())
            if proc.returncode != 0 and b"File exists" not in errors:
                problem = f"ip -batch: {errors.decode()[:200]}"
        except OSError as exc:
            problem = f"ip -batch: {exc}"
        for _, done in batch:
            if problem:
                done.set_exception(OSError(problem))
            else:
                done.set_result(None)


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def emit_progress(nodes: list[SimNode]) -> None:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.stage] = counts.get(node.stage, 0) + 1
    emit({"progress": counts})


async def report_progress(nodes: list[SimNode], stop: asyncio.Event) -> None:
    while not stop.is_set():
        emit_progress(nodes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_EVERY)
    emit_progress(nodes)  # the last word: every node ready or failed


async def run(orders: dict[str, Any]) -> None:
    dhcp = RawDhcp(orders["interface"])
    book = AddressBook(orders["interface"])
    plan = BootPlan(bool(orders["plan"]["control_only"]), dict(orders["plan"]["etags"]))
    nodes = [SimNode(NodeRecord(n["mac"], n["arch"]), dhcp, book.add, plan)
             for n in orders["nodes"]]
    stop = asyncio.Event()
    progress = asyncio.create_task(report_progress(nodes, stop))
    await asyncio.sleep(max(0.0, float(orders["start_at"]) - time.monotonic()))

    async def one(node: SimNode) -> None:
        emit({"record": (await node.boot()).to_dict()})

    try:
        await asyncio.gather(*(one(n) for n in nodes))
    finally:
        stop.set()
        await progress
        dhcp.close()


def main() -> int:
    orders = json.loads(sys.stdin.read())
    asyncio.run(run(orders))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the `ip -batch` runs
    emit({"cpu": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
