"""A throw-away Slurm controller for tests: munged and slurmctld (Debian's Slurm 22.05) with a
generated munge key and slurm.conf on free loopback ports, all under one directory, stopped by
PID. Nodes node[001-004] are declared State=FUTURE, as a site using the slurm handoff would.

slurmctld runs as root (SlurmUser=root); slurmd is not started, so registered nodes show
IDLE+NOT_RESPONDING, which is enough for what the handoff does (resume, drain, state).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from provisioner.lab.netns import stop_process
from tests.support.etcd_server import free_port

NODES = "node[001-004]"


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def start(self) -> None:
        for tool in ("munged", "mungekey", "slurmctld", "scontrol"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise RuntimeError(f"{tool} is missing: apt-get install slurmctld slurm-client "
                                   "munge (scripts/setup.sh)")
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        subprocess.run(["mungekey", "-c", "-b", "1024", "-k", str(key)], check=True)
        key.chmod(0o600)
        sock = munge / "sock"
        self._spawn("munged", ["munged", "-F", "-f", f"--key-file={key}", f"--socket={sock}",
                               f"--pid-file={munge / 'pid'}", f"--seed-file={munge / 'seed'}",
                               f"--log-file={munge / 'log'}"])
        self._wait(sock.exists, "munged")
        self._write_conf(sock)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(self._answers, "slurmctld")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        for log in self._logs:
            log.close()
        self._procs.clear()

    def scontrol(self, *args: str) -> str:
        result = subprocess.run(["scontrol", *args], env={**os.environ, **self.env},
                                capture_output=True, text=True, timeout=30, check=False)
        return result.stdout + result.stderr

    def _write_conf(self, sock: Path) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        self.conf.write_text("\n".join([
            "ClusterName=ptest",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={sock}",
            "CredType=cred/munge",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "ReturnToService=2",
            "MpiDefault=none",
            f"NodeName={NODES} CPUs=2 RealMemory=1024 State=FUTURE",
            "PartitionName=batch Nodes=ALL Default=YES State=UP",
        ]) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.out").open("wb")
        self._logs.append(log)
        env: dict[str, Any] = {**os.environ, **self.env}
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True))

    def _answers(self) -> bool:
        return "UP" in self.scontrol("ping")

    def _wait(self, ready: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if any(p.poll() is not None for p in self._procs) or time.monotonic() > deadline:
                self.stop()
                out = (self.root / f"{what}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what} did not start:\n{out}")
            time.sleep(0.1)
