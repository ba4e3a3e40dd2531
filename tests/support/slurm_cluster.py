"""A throw-away Slurm controller for tests: munged and slurmctld (Debian's Slurm 22.05) with a
generated munge key and slurm.conf, all under one directory, stopped by PID. Nodes are
declared State=FUTURE, as a site using the slurm handoff would.

By default slurmctld listens on free loopback ports and declares node[001-004] with no slurmd
behind them, so registered nodes show IDLE+NOT_RESPONDING, which is enough for what the handoff
does (resume, drain, state). With `namespace` and `host` it runs inside a network namespace
(the lab's) on that address, for nodes that boot there and run a real slurmd: `nodes` then
declares them with their NodeAddr, and `node_conf` is the slurm.conf they get.

Two slurm.conf files, because the munge socket differs: the head's munged cannot take the
default socket (/run/munge/munge.socket.2 belongs to the host), so `conf` (slurmctld, scontrol,
srun) names ours with AuthInfo, while `node_conf` leaves AuthInfo out and a node's slurmd uses
its own munged on the default socket. Everything else is the same in both; NO_CONF_HASH keeps
slurmctld from logging the difference at each registration.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from provisioner.lab.netns import stop_process
from tests.support.etcd_server import free_port

NODES = "NodeName=node[001-004] CPUs=2 RealMemory=1024 State=FUTURE"
#: Slurm's own ports: inside a namespace of its own nothing else holds them
SLURMCTLD_PORT, SLURMD_PORT = 6817, 6818


class SlurmCluster:
    def __init__(self, root: Path, *, namespace: str | None = None, host: str = "127.0.0.1",
                 nodes: str = NODES) -> None:
        self.root = root
        self.namespace = namespace
        self.host = host
        self.nodes = nodes
        self.conf = root / "slurm.conf"
        self.node_conf = root / "node" / "slurm.conf"
        self.munge_key = root / "munge" / "munge.key"
        #: the scontrol an appliance's [handoff] runs: ours, with the head's slurm.conf
        self.scontrol_path = root / "scontrol"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def munge_socket(self) -> Path:
        return self.munge_key.parent / "sock"

    def write(self) -> None:
        """The munge key and both slurm.conf files, without starting anything: an appliance
        reads them at its start, before the namespace slurmctld runs in may exist."""
        for tool in ("munged", "mungekey", "slurmctld", "scontrol", "srun"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise RuntimeError(f"{tool} is missing: apt-get install slurmctld slurm-client "
                                   "munge (scripts/setup.sh)")
        self.munge_key.parent.mkdir(mode=0o755, parents=True)
        subprocess.run(["mungekey", "-c", "-b", "1024", "-k", str(self.munge_key)], check=True)
        self.munge_key.chmod(0o600)
        self._write_confs()

    def start(self) -> None:
        """munged, then slurmctld (in the namespace, if any); `write()` first if not done."""
        if not self.conf.exists():
            self.write()
        munge = self.munge_key.parent
        self._spawn("munged", ["munged", "-F", "-f", f"--key-file={self.munge_key}",
                               f"--socket={self.munge_socket}", f"--pid-file={munge / 'pid'}",
                               f"--seed-file={munge / 'seed'}", f"--log-file={munge / 'log'}"])
        self._wait(self.munge_socket.exists, "munged")
        self._spawn("slurmctld", self.command(["slurmctld", "-D", "-i", "-f", str(self.conf)]))
        self._wait(self._answers, "slurmctld")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        for log in self._logs:
            log.close()
        self._procs.clear()

    def command(self, argv: list[str]) -> list[str]:
        """`argv` where slurmctld runs: inside the namespace, if it has one."""
        if self.namespace is None:
            return argv
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A Slurm client (scontrol, srun, sbatch) beside slurmctld, with the head's conf."""
        return subprocess.run(self.command(list(argv)), env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def scontrol(self, *args: str) -> str:
        result = self.run("scontrol", *args)
        return result.stdout + result.stderr

    def handoff_settings(self) -> str:
        """The [handoff] lines of an appliance that hands its nodes to this controller and
        gives them the munge key and the nodes' slurm.conf in their overlays."""
        return "\n".join([
            'kind = "slurm"',
            f"scontrol = {json.dumps(str(self.scontrol_path))}",
            f"slurm_conf = {json.dumps(str(self.node_conf))}",
            f"munge_key = {json.dumps(str(self.munge_key))}",
        ])

    def log(self, lines: int = 40) -> str:
        text = (self.root / "slurmctld.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _write_confs(self) -> None:
        (self.root / "state").mkdir()
        slurmctld, slurmd = ((SLURMCTLD_PORT, SLURMD_PORT) if self.namespace
                             else (free_port(), free_port()))
        # slurmctld refuses to run on a host whose name is not SlurmctldHost's; nodes reach
        # it by the address in parentheses, never by that name.
        common = [
            "ClusterName=ptest",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}({self.host})",
            f"SlurmctldPort={slurmctld}",
            f"SlurmdPort={slurmd}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "DebugFlags=NO_CONF_HASH",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "ReturnToService=2",
            "MpiDefault=none",
            self.nodes,
            "PartitionName=batch Nodes=ALL Default=YES State=UP",
        ]
        head = [
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
        ]
        self.conf.write_text("\n".join(common + head) + "\n")
        self.node_conf.parent.mkdir()
        # A lab node's serial console is its log a failed test prints: slurmd's lines too.
        self.node_conf.write_text("\n".join([*common, "SlurmdLogFile=/dev/ttyS0"]) + "\n")
        self.scontrol_path.write_text(f"#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf))} "
                                      "exec scontrol \"$@\"\n")
        self.scontrol_path.chmod(0o755)

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
