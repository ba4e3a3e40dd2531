"""Fixtures for the TFTP interop tests: `provisioner serve` in a network namespace, real clients
(tftp-hpa, atftp, tftpy) in the other one.

`tftp_lab` (module scope) builds, in order: a NetnsPair; a TFTP root with a 4 MiB random file, a
small file and a symlink leading out of the root (to `outside/secret`, a sibling of the root); a
sqlite data directory with one node whose reserved IP is the client namespace's address (added
with the CLI, as an operator would); and `python -m provisioner serve` in the server namespace,
polled with tftp-hpa until port 69 answers (20 s at most). Teardown kills the server by PID and
deletes the namespaces even when a test fails.

`OpenWatch` records, with inotify, every open or read of a file in a directory by any process:
the proof that a refused request read nothing outside the root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.netns import NetnsPair

BIG_SIZE = 4 * 1024 * 1024
MAC = "52:54:00:aa:bb:01"
NODE_NAME = "interop01"
TFTP_PORT = 69
API_PORT = 18069
READY_LIMIT = 20.0

# A tiny TFTP client for probes, run inside the client namespace with the test's Python: sends
# each datagram from a fresh socket to SERVER:69, returns the first reply (opcode, bytes as hex,
# source port), then ends any transfer it started with an ERROR so the server frees it.
PROBE_CLIENT = r"""
import json, socket, struct, sys
server, port, timeout, datagrams = json.loads(sys.argv[1])
out = []
for hexed in datagrams:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(bytes.fromhex(hexed), (server, port))
    try:
        data, addr = s.recvfrom(70000)
    except socket.timeout:
        out.append(None)
    else:
        out.append({"hex": data.hex(), "port": addr[1]})
        if data[:2] in (b"\x00\x03", b"\x00\x06"):
            s.sendto(b"\x00\x05\x00\x00probe done\x00", addr)
    s.close()
print(json.dumps(out))
"""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rrq(filename: bytes, mode: bytes = b"octet", **options: bytes) -> bytes:
    """An RRQ datagram; option values are raw bytes so that malformed ones can be sent."""
    body = b"\x00\x01" + filename + b"\x00" + mode + b"\x00"
    for name, value in options.items():
        body += name.encode() + b"\x00" + value + b"\x00"
    return body


@dataclass
class TftpLab:
    pair: NetnsPair
    root: Path
    outside: Path
    data_dir: Path
    scratch: Path
    server: subprocess.Popen[Any]
    server_log: Path
    big_sha256: str

    @property
    def server_ip(self) -> str:
        return str(self.pair.server_ip)

    @property
    def client_ip(self) -> str:
        return str(self.pair.client_ip)

    def log(self) -> str:
        try:
            return self.server_log.read_text(errors="replace")[-6000:]
        except OSError as exc:
            return f"(no server log: {exc})"

    def client(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a client command in the client namespace (bounded)."""
        return self.pair.run(self.pair.client_ns, argv, timeout=timeout)

    def tftp_hpa(self, command: str, *flags: str,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """tftp-hpa in binary mode: `tftp [flags] -m binary SERVER -c <command>`."""
        return self.client(["tftp", *flags, "-m", "binary", self.server_ip, "-c",
                            *command.split()], timeout=timeout)

    def probe(self, *datagrams: bytes, timeout: float = 2.0) -> list[dict[str, Any] | None]:
        """Send each datagram to port 69 from the client namespace; the first reply of each."""
        args = json.dumps([self.server_ip, TFTP_PORT, timeout, [d.hex() for d in datagrams]])
        result = self.client([sys.executable, "-c", PROBE_CLIENT, args],
                             timeout=10 + timeout * len(datagrams))
        assert result.returncode == 0, result.stderr
        replies: list[dict[str, Any] | None] = json.loads(result.stdout)
        return replies

    def fresh_output(self, name: str) -> Path:
        path = self.scratch / name
        path.unlink(missing_ok=True)
        return path

    def alive(self) -> None:
        assert self.server.poll() is None, f"the server exited:\n{self.log()}"


def _provisioner(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _wait_ready(lab: TftpLab) -> None:
    deadline = time.monotonic() + READY_LIMIT
    out = lab.scratch / "ready.txt"
    last = ""
    while time.monotonic() < deadline:
        if lab.server.poll() is not None:
            break
        result = lab.tftp_hpa(f"get small.txt {out}", timeout=10)
        if out.exists() and out.read_bytes() == (lab.root / "small.txt").read_bytes():
            return
        last = (result.stdout + result.stderr).strip()
        time.sleep(0.3)
    pytest.fail(f"provisioner serve did not answer TFTP on {lab.server_ip}:69 within "
                f"{READY_LIMIT:.0f} s (last client output: {last!r}; server exit status "
                f"{lab.server.poll()})\n--- server log ---\n{lab.log()}")


@pytest.fixture(scope="module")
def tftp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TftpLab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "tftp", "atftp"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: iproute2, tftp-hpa, atftp)")
    base = tmp_path_factory.mktemp("tftp-interop")
    data_dir, root, outside, scratch = (base / "data", base / "data" / "tftp",
                                        base / "outside", base / "scratch")
    for directory in (root / "sub", outside, scratch):
        directory.mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    (root / "small.txt").write_bytes(b"hello from the TFTP root\n")
    (root / "sub" / "nested.txt").write_bytes(b"nested\n")
    (outside / "secret").write_bytes(b"outside the root\n")
    (root / "escape").symlink_to(outside / "secret")
    (root / "escape-rel").symlink_to(Path("..") / ".." / "outside" / "secret")
    (root / "linkdir").symlink_to(outside)

    pair = NetnsPair.create()
    try:
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(data_dir), "PROVISIONER_CONFIG": "",
               "PROVISIONER_TFTP_LISTEN": str(pair.server_ip),
               "PROVISIONER_TFTP_PORT": str(TFTP_PORT),
               "PROVISIONER_API_LISTEN": "127.0.0.1", "PROVISIONER_API_PORT": str(API_PORT),
               "PYTHONUNBUFFERED": "1"}
        added = _provisioner(env, "node", "add", MAC, "--name", NODE_NAME,
                             "--ip", str(pair.client_ip))
        assert added.returncode == 0, f"node add failed: {added.stdout}{added.stderr}"
        server_log = base / "serve.log"
        with server_log.open("w") as log:
            server = pair.spawn(pair.server_ns, [sys.executable, "-m", "provisioner", "serve"],
                                log=log, env=env)
        lab = TftpLab(pair, root, outside, data_dir, scratch, server, server_log,
                      sha256_file(root / "big.bin"))
        _wait_ready(lab)
        yield lab
    finally:
        pair.close()


class OpenWatch:
    """inotify on one directory: IN_OPEN/IN_ACCESS of it or any file in it, by any process."""

    IN_ACCESS = 0x001
    IN_OPEN = 0x020
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory),
                                          self.IN_OPEN | self.IN_ACCESS)
        if wd < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def events(self) -> list[str]:
        """What was opened or read since the watch started ('' is the directory itself)."""
        seen: list[str] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset + 16 <= len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, offset)
                name = buf[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                kind = "open" if mask & self.IN_OPEN else "read"
                seen.append(f"{kind} {name}")
                offset += 16 + length

    def close(self) -> None:
        os.close(self._fd)
