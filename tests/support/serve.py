"""`provisioner serve` as a child process on loopback ports, for the tests that kill or stop it
(SIGKILL, SIGTERM) and start it again: its settings come from the environment, its output goes
to a log the assertions quote, and it is stopped by PID."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from provisioner.lab.netns import stop_process

WAIT = 30.0  # seconds, generous, for the process to answer on a busy machine


class ServeProcess:
    """`provisioner serve` with `env` (PROVISIONER_API_PORT on 127.0.0.1), logging to `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['PROVISIONER_API_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start it (again) and wait until its /healthz answers; fails with its log if it
        exits first or does not answer within WAIT."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "provisioner", "serve"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + WAIT
        while await self.tasks() is None:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    async def tasks(self) -> set[str] | None:
        """The names of the tasks its /healthz lists; None while it does not answer."""
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.get(self.url + "/healthz", timeout=2.0)
        except httpx.HTTPError:
            return None
        return {t["name"] for t in answer.json().get("tasks", [])}

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Stop it with `sig` (SIGKILL 10 s later if it is still there); its exit status."""
        if self.proc is not None:
            stop_process(self.proc, sig)
            return self.proc.returncode
        return None
