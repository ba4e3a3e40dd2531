"""A real Prometheus (Debian's `prometheus`) scraping targets the test names, queried through
its HTTP API.

    with PrometheusServer(["127.0.0.1:8080"], work, netns=bed.netns) as prom:
        prom.wait_for("provisioner_nodes{state='ready'}", lambda v: v == 3)

It gets a generated config (scrape interval 1 s), a free loopback port and a storage
directory of its own under `work`; it is started in the test's namespace when `netns` is
given (its targets and its API are then that namespace's), and ended by its PID. Every wait is
bounded in time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from provisioner.lab.netns import Namespace

T = TypeVar("T")
START_TIMEOUT = 60.0
CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: provisioner
    metrics_path: {path}
    static_configs:
      - targets: {targets}
"""
#: a target that listens beyond loopback wants a token for /metrics (web/metrics.py)
AUTHORIZATION = """    authorization:
      credentials_file: {path}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    def __init__(self, targets: Sequence[str], work: Path, *, netns: str | None = None,
                 metrics_path: str = "/metrics", token: str | None = None) -> None:
        self.targets, self.work, self.netns = list(targets), work, netns
        self.token = token
        self.metrics_path = metrics_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._ns = Namespace(netns) if netns else None
        self.port = self._here(_free_port)
        self.url = f"http://127.0.0.1:{self.port}"

    def _here(self, fn: Callable[[], T]) -> T:
        """Run `fn` where Prometheus runs: in the namespace, or here."""
        return self._ns.call(fn, 60) if self._ns is not None else fn()

    def start(self) -> PrometheusServer:
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "prometheus.yml"
        config.write_text(CONFIG.format(path=json.dumps(self.metrics_path),
                                        targets=json.dumps(self.targets)))
        if self.token is not None:
            secret = self.work / "token"
            secret.write_text(self.token)
            with config.open("a") as out:
                out.write(AUTHORIZATION.format(path=json.dumps(str(secret))))
        argv = ["prometheus", f"--config.file={config}",
                f"--storage.tsdb.path={self.work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        if self.netns:  # `ip netns exec` execs prometheus: the PID is Prometheus's own
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log = (self.work / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start: {self.log()[-2000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def _get(self, path: str) -> tuple[int, bytes]:
        def get() -> tuple[int, bytes]:
            with urllib.request.urlopen(self.url + path, timeout=5) as answer:
                return int(answer.status), answer.read()
        return self._here(get)

    def log(self) -> str:
        path = self.work / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (/api/v1/query)."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {body[:500]!r}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of `expr` now, or None when it has no series (yet)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, wanted: Callable[[float], bool],
                 timeout: float = 60.0) -> float:
        """The value of `expr` once `wanted` holds for it (scrapes come every second)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and wanted(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"{expr} is {last} after {timeout} s")

    def targets_up(self) -> list[str]:
        """The scrape targets Prometheus saw up at its last scrape of each."""
        return [r["metric"]["instance"] for r in self.query("up == 1")]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        if self._ns is not None:
            self._ns.close()
            self._ns = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
