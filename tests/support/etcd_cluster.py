"""A real, throw-away 3-member etcd cluster for tests (Debian's etcd-server package).

`EtcdCluster(data_dir).start()` runs three `/usr/bin/etcd` members on free loopback ports, each
with its data and log under `data_dir/mN`, and returns once every member answers `/health`
(which it does only once the cluster has a raft leader). `kill(i)` SIGKILLs one member by its
PID, as a crash would; `stop()` kills them all and is safe to repeat. The raft timings are the
single test server's (tests/support/etcd_server.py): a lost leader is replaced within about a
second.

Like EtcdServer it never skips: without the binary it raises, naming scripts/setup.sh.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.etcd_server import ETCD_BIN, START_TIMEOUT, free_port

SIZE = 3


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.data_dir / "etcd.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    def __init__(self, data_dir: Path, size: int = SIZE) -> None:
        self.members = [Member(f"m{i}", Path(data_dir) / f"m{i}") for i in range(size)]
        atexit.register(self.stop)

    @property
    def endpoints(self) -> list[str]:
        """Every member's `127.0.0.1:PORT`, the form EtcdStore takes."""
        return [m.endpoint for m in self.members]

    def start(self) -> None:
        """All members on fresh free ports; returns once each is healthy (bounded, 20 s)."""
        if not os.access(ETCD_BIN, os.X_OK):
            raise RuntimeError(f"etcd server binary {ETCD_BIN} not found: run scripts/setup.sh "
                               "(it installs Debian's etcd-server)")
        for member in self.members:
            member.client_port, member.peer_port = free_port(), free_port()
        try:
            for member in self.members:
                self._launch(member)
            for member in self.members:
                self._wait_healthy(member)
        except BaseException:
            self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL member `index` by its PID (a crash: nothing flushed)."""
        member = self.members[index]
        if member.process is not None and member.running:
            member.process.kill()
            member.process.wait()
        self._close(member)

    def stop(self) -> None:
        """SIGKILL every member by its PID: the data is thrown away, and a SIGTERMed raft
        leader would first try to hand its lead to the dead member. Safe to call twice."""
        for index in range(len(self.members)):
            self.kill(index)

    def _launch(self, member: Member) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        client_url = f"http://{member.endpoint}"
        command = [
            ETCD_BIN, f"--name={member.name}", f"--data-dir={member.data_dir / 'data'}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={cluster}", "--initial-cluster-state=new",
            "--initial-cluster-token=provisioner-test-cluster",
            # (the single test server's timings: a new raft leader within about a second)
            "--heartbeat-interval=50", "--election-timeout=500", "--enable-pprof=false",
        ]
        self._close(member)
        member.log = (member.data_dir / "etcd.log").open("ab")
        member.log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        member.log.flush()
        # Own session: a Ctrl-C aimed at pytest does not reach etcd first; stopped by PID.
        member.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=member.log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_healthy(self, member: Member) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if not member.running:
                raise RuntimeError(f"etcd member {member.name} exited while starting:\n"
                                   f"{member.log_tail()}")
            try:
                url = f"http://{member.endpoint}/health"
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    body = json.loads(response.read())
                if body.get("health") in ("true", True):
                    return
                last_error = f"/health said {body}"
            except (OSError, urllib.error.URLError, ValueError) as error:
                last_error = str(error)
            time.sleep(0.1)
        raise RuntimeError(f"etcd member {member.name} not healthy after {START_TIMEOUT:g} s "
                           f"({last_error}):\n{member.log_tail()}")

    @staticmethod
    def _close(member: Member) -> None:
        if member.log is not None:
            member.log.close()
            member.log = None
