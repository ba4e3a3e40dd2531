"""The handoff to Slurm through `scontrol` (tested against Slurm 22.05's slurmctld).

Nodes are declared in slurm.conf with `State=FUTURE` (their CPUs, memory and partitions are
Slurm's configuration, not ours); `scontrol update nodename=X state=resume` brings a FUTURE,
drained or down node into service. slurmrestd is not used: its v0.0.38 API has no node update
and it refuses to run as root. `scontrol create nodename=...` exits 0 on 22.05 without creating
anything unless dynamic nodes are configured, so it is not relied on.

Resume is made idempotent here: Slurm refuses to resume a node that is already in service
("Invalid node state specified"), which for us means the registration already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from provisioner.errors import HandoffError, NotFound
from provisioner.handoff.base import HandoffNode, HandoffRejected

#: State flags that mean the node is not (yet) in service.
OUT_OF_SERVICE = {"DRAIN", "DOWN", "FUTURE", "FAIL", "MAINT", "REBOOT_REQUESTED"}


class SlurmHandoff:
    def __init__(self, scontrol: str = "scontrol", *, timeout: float = 10.0,
                 env: dict[str, str] | None = None, partition: str = "") -> None:
        self.scontrol = scontrol
        self.timeout = timeout
        self.env = env  # e.g. SLURM_CONF; None: inherit ours
        self.partition = partition  # when set, a registered node must be in it

    async def register(self, node: HandoffNode) -> None:
        try:
            await self.resume(node.name)
            fields = await self.show(node.name) if self.partition else {}
        except NotFound as exc:  # retrying cannot help until slurm.conf declares it
            raise HandoffRejected(str(exc)) from None
        if self.partition and self.partition not in fields.get("Partitions", "").split(","):
            raise HandoffRejected(f"slurm node {node.name} is not in partition "
                                  f"{self.partition}; add it to that PartitionName's Nodes= "
                                  "in slurm.conf")

    async def resume(self, name: str) -> None:
        code, _, err = await self._run("update", f"nodename={name}", "state=resume")
        if code == 0:
            return
        if "Invalid node state" in err and not (await self.state(name)) & OUT_OF_SERVICE:
            return  # already in service
        self._fail(name, "resume", err)

    async def drain(self, name: str, reason: str) -> None:
        code, _, err = await self._run("update", f"nodename={name}", "state=drain",
                                       f"reason={reason}")
        if code != 0:
            self._fail(name, "drain", err)

    async def is_idle(self, name: str) -> bool:
        fields = await self.show(name)
        return fields.get("CPUAlloc", "0") == "0" and not (
            self._flags(fields) & {"ALLOCATED", "MIXED", "COMPLETING"})

    async def state(self, name: str) -> set[str]:
        return self._flags(await self.show(name))

    async def show(self, name: str) -> dict[str, str]:
        """`scontrol show node NAME -o --future` as KEY=VALUE pairs."""
        code, out, err = await self._run("show", "node", name, "-o", "--future")
        if code != 0:
            self._fail(name, "show", err)
        fields: dict[str, str] = {}
        for word in out.split():
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields

    async def close(self) -> None:
        return None

    @staticmethod
    def _flags(fields: dict[str, str]) -> set[str]:
        return set(fields.get("State", "UNKNOWN").split("+"))

    def _fail(self, name: str, what: str, err: str) -> None:
        message = err.strip().splitlines()[-1] if err.strip() else "no message"
        if "not found" in message or "Invalid node name" in message:
            raise NotFound(f"slurm has no node {name!r} ({message}); declare it in slurm.conf "
                           "with State=FUTURE")
        if "Invalid" in message:
            raise HandoffRejected(f"slurm refused {what} of {name}: {message}")
        raise HandoffError(f"slurm {what} of {name} failed: {message}; is slurmctld up?")

    async def _run(self, *args: str) -> tuple[int, str, str]:
        env = None if self.env is None else {**os.environ, **self.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.scontrol, *args, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise HandoffError(f"cannot run {self.scontrol}: {exc.strerror}; install "
                               "slurm-client or set [handoff] scontrol") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise HandoffError(f"scontrol {' '.join(args)} took over {self.timeout} s; "
                               "is slurmctld up?") from None
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
