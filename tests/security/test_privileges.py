"""`provisioner serve` started as root binds its ports, then runs as the service user with
only CAP_NET_BIND_SERVICE and CAP_NET_RAW: read from /proc/<pid>/status of the real process.
It runs in a network namespace of its own so that it may bind ports 69 and 80."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab.netns import stop_process
from provisioner.security.privileges import CAP_NET_BIND_SERVICE, CAP_NET_RAW

pytestmark = pytest.mark.netns
USER = "provisioner"
NETNS = f"pv-priv-{os.getpid()}"
API = "http://127.0.0.1:8080"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """A request from inside the namespace (the appliance listens on its loopback)."""
    argv = ["ip", "netns", "exec", NETNS, sys.executable, "-c",
            "import sys, urllib.request as u; r = u.urlopen(u.Request(sys.argv[1], "
            "data=sys.argv[2].encode() or None, headers={'Content-Type': 'application/json'}),"
            " timeout=5); print(r.status); sys.stdout.flush(); sys.stdout.buffer.write(r.read())",
            url, (data or b"").decode()]
    done = subprocess.run(argv, check=False, capture_output=True, timeout=30)
    if done.returncode != 0:
        return 0, done.stderr
    status, _, body = done.stdout.partition(b"\n")
    return int(status), body


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test starts the appliance as root and watches it drop")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"user {USER} is missing: scripts/setup.sh creates it")
    data = Path(tempfile.mkdtemp(prefix="pv-priv-"))  # under /tmp: reachable by the user
    (data / "lab.toml").write_text(
        f'data_dir = "{data}"\n[api]\nauth = false\nlisten = "127.0.0.1"\n'
        f'[service]\nuser = "{USER}"\n[handoff]\nkind = "none"\n'
        '[tftp]\nlisten = "127.0.0.1"\n[boot]\nlisten = "127.0.0.1"\n')
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(["ip", "netns", "exec", NETNS, sys.executable, "-m", "provisioner",
                             "-c", str(data / "lab.toml"), "serve"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, data
    finally:
        stop_process(proc)
        log.close()
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        shutil.rmtree(data, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], data: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data / "serve.log").read_text()
        if _get(f"{API}/healthz")[0] == 200:
            return
        time.sleep(0.5)
    pytest.fail("the appliance did not answer /healthz: " + (data / "serve.log").read_text())


def test_serve_drops_root_and_keeps_two_capabilities(
        served: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, data = served
    _wait_ready(proc, data)
    account = pwd.getpwnam(USER)
    status = _status(proc.pid)  # `ip netns exec` execs: this is the appliance
    assert status["Uid"].split() == [str(account.pw_uid)] * 4
    assert status["Gid"].split() == [str(account.pw_gid)] * 4
    assert status["Groups"] == ""
    kept = (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_RAW)
    assert int(status["CapEff"], 16) == kept and int(status["CapPrm"], 16) == kept
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert "keeping only CAP_NET_BIND_SERVICE and CAP_NET_RAW" in (data / "serve.log").read_text()
    # it still does its job as that user: the store is its own and takes writes
    node = json.dumps({"mac": "52:54:00:00:00:01", "name": "n1"}).encode()
    created, body = _get(f"{API}/api/v1/nodes", node)
    assert created == 201, body
    assert (data / "store.db").stat().st_uid == account.pw_uid
    assert _get(f"{API}/api/v1/nodes/n1")[0] == 200
    assert data.stat().st_mode & 0o777 == 0o700
    opened = {p.name: p.stat().st_mode & 0o777 for p in data.rglob("*") if p.is_file()}
    assert {"store.db", "store.db-wal"} <= set(opened)
    written_by_test = {"lab.toml", "serve.log"}
    assert all(mode & 0o077 == 0 for name, mode in sorted(opened.items())
               if name not in written_by_test), sorted(opened.items())
