"""A real, throw-away etcd server for tests and benchmarks (Debian's etcd-server package).

`EtcdServer(data_dir).start()` runs `/usr/bin/etcd` as a one-member cluster on free loopback
ports with its data and log under `data_dir`, and returns once it answers `/health`. `stop()`
(SIGTERM, then SIGKILL after 5 s), `kill()` (SIGKILL, for crash tests) and `restart()` (same ports,
same data) let tests take the store away and bring it back.

`EtcdServer(data_dir, tls=True)` serves clients over TLS only and demands client certificates
(--client-cert-auth), with a throw-away PKI that `make_pki` generates with openssl under
`data_dir/pki`: a CA, etcd's certificate, a client certificate (CN `provisioner`) and, for the
refusal tests, a second CA with a client certificate etcd does not trust. `enable_auth()` turns
on etcd auth with a user and password, as an operator would with etcdctl.

It never skips: without the binary it raises, naming scripts/setup.sh, so a CI run without etcd
fails loudly instead of passing a suite that tested nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

ETCD_BIN = os.environ.get("PROVISIONER_ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("PROVISIONER_ETCDCTL_BIN", "/usr/bin/etcdctl")
START_TIMEOUT = 20.0
STOP_GRACE = 5.0
NAME = "provisioner-test"


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it; etcd binds it soon after).

    There is a window in which another process could take it; `start()` retries with fresh ports
    when etcd reports the address in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Pki:
    """Paths of the test PKI's PEM files (see make_pki)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA etcd does not trust
    rogue_cert: Path  # a client certificate signed by other_ca
    rogue_key: Path


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace')}")


def make_pki(directory: Path) -> Pki:
    """A CA, etcd's certificate for 127.0.0.1, a client certificate, and an untrusted pair.
    EC P-256 keys: quick to make. Keys are mode 600, as the store requires of its key."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", f"/CN=provisioner test {ca}",
                 "-keyout", str(directory / f"{ca}.key"), "-out", str(directory / f"{ca}.crt"))
    leaves = (("server", "127.0.0.1", "ca",
               "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
              ("client", "provisioner", "ca", "extendedKeyUsage=clientAuth"),
              ("rogue", "provisioner", "other-ca", "extendedKeyUsage=clientAuth"))
    for name, cn, ca, extensions in leaves:
        key, csr, ext = (directory / f"{name}.{s}" for s in ("key", "csr", "ext"))
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
        ext.write_text(extensions + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(directory / f"{ca}.crt"),
                 "-CAkey", str(directory / f"{ca}.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(ext), "-out", str(directory / f"{name}.crt"))
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key",
               directory / "client.crt", directory / "client.key", directory / "other-ca.crt",
               directory / "rogue.crt", directory / "rogue.key")


class EtcdServer:
    def __init__(self, data_dir: Path, *, tls: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.pki = make_pki(self.data_dir / "pki") if tls else None
        self.log_path = self.data_dir / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._cleanup_registered = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, the form EtcdStore takes."""
        if not self.client_port:
            raise RuntimeError("EtcdServer has not been started")
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start on fresh free ports and wait until etcd is healthy (bounded, 20 s)."""
        if self.running:
            return
        for attempt in range(3):
            self.client_port, self.peer_port = free_port(), free_port()
            try:
                self._launch()
                return
            except RuntimeError as error:
                # Only the port race is worth another try; anything else is reported as is.
                if "address already in use" not in str(error) or attempt == 2:
                    raise

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and data directory."""
        if not self.client_port:
            self.start()
            return
        self.stop()
        self._launch()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s. Safe to call twice or before start()."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would; no chance to flush anything."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._process = None
        self._close_log()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run `etcdctl --endpoints <this server> ARGS` (API v3) and return its stdout."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        tls = ([f"--cacert={self.pki.ca}", f"--cert={self.pki.client_cert}",
                f"--key={self.pki.client_key}"] if self.pki else [])
        result = subprocess.run(
            [ETCDCTL_BIN, f"--endpoints={self.client_url}", *tls, *args],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"etcdctl {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def enable_auth(self, user: str, password: str) -> None:
        """etcd auth on, as an operator does it: root, a user whose role may read and write
        every key, `auth enable`. (With TLS, etcdctl then acts as its certificate's CN.)"""
        self.etcdctl("user", "add", f"root:root-{password}")
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("role", "add", "provisioner-rw")
        self.etcdctl("role", "grant-permission", "provisioner-rw", "--prefix=true", "readwrite",
                     "/")
        self.etcdctl("user", "grant-role", user, "provisioner-rw")
        self.etcdctl("auth", "enable")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _launch(self) -> None:
        if not os.access(ETCD_BIN, os.X_OK):
            raise RuntimeError(
                f"etcd server binary {ETCD_BIN} not found: run scripts/setup.sh (it installs "
                "Debian's etcd-server); the etcd tests need a real server and are never skipped"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            ETCD_BIN,
            f"--name={NAME}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={NAME}={self.peer_url}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=provisioner-test",
            # Shorter raft timings: leader election on (re)start is faster, and the minimum lease
            # TTL (1.5 election timeouts) drops from 2 s to 1 s, so lease tests are quick.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--enable-pprof=false",
        ]
        if self.pki is not None:
            command += [f"--cert-file={self.pki.server_cert}", f"--key-file={self.pki.server_key}",
                        f"--trusted-ca-file={self.pki.ca}", "--client-cert-auth"]
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C aimed at pytest does not reach etcd first, and stop() still
            # ends it by PID.
            start_new_session=True,
        )
        if not self._cleanup_registered:
            atexit.register(self.stop)
            self._cleanup_registered = True
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with status {self._process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0,
                                            context=self._ssl_context()) as response:
                    body = json.loads(response.read())
                if body.get("health") in ("true", True):
                    return
                last_error = f"/health said {body}"
            except (OSError, urllib.error.URLError, ValueError) as error:
                last_error = str(error)
            time.sleep(0.1)
        raise RuntimeError(
            f"etcd on {self.endpoint} not healthy after {START_TIMEOUT:g} s ({last_error}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.pki is None:
            return None
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return context

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
