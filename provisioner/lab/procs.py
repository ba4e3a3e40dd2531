"""Detached processes the lab starts and stops by PID, from this process or a later one.

`lab up` returns while the appliance, the scheduler and the QEMU nodes keep running, and
`lab down` runs in another process: so each process is started in its own session (its PID is
its process group) and recorded with its start time from /proc. Stopping checks the start time
first, so a recycled PID belonging to something else is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Proc:
    """A process the lab started: what it is, its PID, its start time (clock ticks since
    boot, field 22 of /proc/PID/stat) and where its output goes."""

    role: str
    pid: int
    start_time: int
    log: str

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "pid": self.pid, "start_time": self.start_time,
                "log": self.log}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proc:
        return cls(str(data["role"]), int(data["pid"]), int(data["start_time"]),
                   str(data["log"]))


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if there is no such (live) process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie has finished; only its parent's wait is missing
        return None
    return int(fields[19])


def alive(proc: Proc) -> bool:
    return start_time(proc.pid) == proc.start_time


def spawn(role: str, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Proc:
    """Start `argv` detached (own session, stdin closed), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                 cwd=cwd)
    began = start_time(child.pid)
    # Popen objects left unwaited warn at exit; the reaping is done by reap() or by init.
    child.returncode = 0
    return Proc(role, child.pid, began or 0, str(log))


def reap(pid: int) -> None:
    """Collect a finished child of this process so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(proc: Proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(proc.pid)
        if not alive(proc):
            return True
        time.sleep(0.05)
    return not alive(proc)


def signal_proc(proc: Proc, sig: int) -> bool:
    """Send `sig` to the process group of `proc` if it is still the process we started."""
    if not alive(proc):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(proc.pid, sig)
    return True


def stop(proc: Proc, *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds. A process already gone is fine."""
    if signal_proc(proc, signal.SIGTERM) and not wait_gone(proc, grace):
        signal_proc(proc, signal.SIGKILL)
        wait_gone(proc, 5.0)
    reap(proc.pid)


def kill(proc: Proc) -> None:
    """SIGKILL at once: the crash tests' way to take a process away."""
    signal_proc(proc, signal.SIGKILL)
    wait_gone(proc, 5.0)
