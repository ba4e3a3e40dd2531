"""A throw-away one-member etcd (Debian etcd-server): the store peer, and the server our etcd
backend is measured on.

    etcd = Etcd(bed, work / "etcd"); etcd.start(); ...; etcd.stop()

It runs on the server side of a Testbed: inside the server namespace (on that namespace's own
loopback, so its traffic stays there) or, with a loopback bed, on the host's 127.0.0.1 on free
ports. Fresh data directory each start; flags as tests/etcd_server.py (short raft timings).
start() returns once /health answers (bounded); stop() is by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.peers.testbed import Testbed

START_LIMIT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Etcd:
    def __init__(self, bed: Testbed, work: Path) -> None:
        self.bed = bed
        self.work = work
        self.proc: subprocess.Popen[Any] | None = None
        # in a namespace of our own, fixed ports cannot collide with anyone's
        self.client_port, self.peer_port = ((23790, 23800) if bed.pair is not None
                                            else (free_port(), free_port()))

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, the form EtcdStore and aetcd take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return ["etcd", "--name=bench", f"--data-dir={self.work / 'data'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bench={peer}", "--initial-cluster-state=new",
                "--initial-cluster-token=bench", "--heartbeat-interval=50",
                "--election-timeout=500", "--enable-pprof=false"]

    def start(self) -> None:
        shutil.rmtree(self.work / "data", ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / "etcd.log"
        self.proc = self.bed.spawn_server(self.argv(), log)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"etcd exited at start (status {self.proc.returncode}); "
                                 f"see {log}")
            probe = subprocess.run(self.bed.server_side(
                ["curl", "-sf", "-m", "1", f"http://{self.endpoint}/health"]),
                capture_output=True, text=True, timeout=10, check=False)
            if '"health":"true"' in probe.stdout:
                return
            time.sleep(0.2)
        raise SystemExit(f"etcd not healthy within {START_LIMIT_S:g} s; see {log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.bed.stop(self.proc)
            self.proc = None

    def __enter__(self) -> Etcd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
