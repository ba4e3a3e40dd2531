"""SIGTERM to a real `provisioner serve`: new connections are refused at once (boot plane, API,
TFTP), a download under way completes, a handoff that cannot be delivered stays queued in the
store, and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.lab.netns import stop_process
from provisioner.tftp.packet import Mode, Opcode, encode_request
from tests.support.etcd_server import free_port

IMAGE_SIZE = 48 << 20  # bytes: far more than the loopback socket buffers hold
PATH = "/boot/images/compute/1/image.cpio.xz"
WAIT = 20.0  # seconds, generous: the machine may be busy


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    boot: int
    api: int
    tftp: int
    log: Path
    data: Path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """`provisioner serve` with `[service] stop_timeout` (param, seconds; default 20)."""
    stop_timeout = getattr(request, "param", 20)
    data = tmp_path / "data"
    version = data / "bootimages" / "compute" / "1"
    version.mkdir(parents=True)
    with (version / "image.cpio.xz").open("wb") as image:
        image.truncate(IMAGE_SIZE)
    boot, api, tftp = free_port(), free_port(), _free_udp_port()
    env = {**os.environ, "PROVISIONER_DATA_DIR": str(data), "PROVISIONER_CONFIG": "",
           "PROVISIONER_STORE_BACKEND": "sqlite", "PROVISIONER_DHCP_MODE": "off",
           "PROVISIONER_TFTP_LISTEN": "127.0.0.1", "PROVISIONER_TFTP_PORT": str(tftp),
           "PROVISIONER_TFTP_IPXE_DIR": "",
           "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": str(boot),
           "PROVISIONER_API_LISTEN": "127.0.0.1", "PROVISIONER_API_PORT": str(api),
           # a scheduler nobody runs: handoffs cannot be delivered
           "PROVISIONER_SCHEDULER_URL": f"http://127.0.0.1:{free_port()}",
           "PROVISIONER_SERVICE_STOP_TIMEOUT": str(stop_timeout), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "provisioner", "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _until(lambda: _connects(boot) and _connects(api), log, proc)
        yield Served(proc, boot, api, tftp, log, data)
    finally:
        stop_process(proc, signal.SIGKILL)


def _until(check: Callable[[], bool], log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _tftp_refused(port: int) -> bool:
    """True when a read request to the TFTP port meets a closed port (ICMP unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.connect(("127.0.0.1", port))
        sock.send(encode_request(Opcode.RRQ, "undionly.kpxe", Mode.OCTET))
        try:
            sock.recv(1024)
        except ConnectionRefusedError:
            return True
        except TimeoutError:
            return False
        return False


def test_sigterm_finishes_a_download_refuses_new_work_and_exits_0(served: Served) -> None:
    assert not _tftp_refused(served.tftp)  # listening: an answer (a TFTP error) comes back
    client = socket.create_connection(("127.0.0.1", served.boot), timeout=WAIT)
    client.sendall(f"GET {PATH} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    received = client.recv(1 << 16)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = len(body)
    served.proc.send_signal(signal.SIGTERM)  # the download is under way
    _until(lambda: not _connects(served.boot), served.log, served.proc)
    _until(lambda: not _connects(served.api), served.log, served.proc)
    _until(lambda: _tftp_refused(served.tftp), served.log, served.proc)
    while chunk := client.recv(1 << 20):
        got += len(chunk)
        time.sleep(0.002)  # a slow reader: the server waits on us
    client.close()
    assert got == IMAGE_SIZE
    assert served.proc.wait(timeout=WAIT) == 0, served.log.read_text()
    text = served.log.read_text()
    assert "SIGTERM: refusing new work" in text and "Traceback" not in text


@pytest.mark.parametrize("served", [2], indirect=True)
def test_a_handoff_not_delivered_by_the_deadline_stays_queued(served: Served) -> None:
    from provisioner.handoff.base import HandoffNode
    from provisioner.handoff.outbox import HandoffQueue
    from provisioner.inventory import keys
    from provisioner.nodes.model import MacAddress

    op = HandoffQueue.entry(HandoffNode("node001", MacAddress("52:54:00:00:00:01"), cpus=1,
                                        memory_mib=1))
    assert op.value is not None
    store_path = served.data / "store.db"
    _put(store_path, op.key, op.value)  # as another process's submit: the outbox follows it
    _until(lambda: "handoff of 52:54:00:00:00:01 not confirmed" in served.log.read_text(),
           served.log, served.proc)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=WAIT + 10) == 0, served.log.read_text()
    assert "1 handoff(s) not delivered yet; they stay queued" in served.log.read_text()
    assert json.loads(_get(store_path, keys.outbox("52:54:00:00:00:01")))["node"]["name"] == \
        "node001"


def _put(path: Path, key: str, value: bytes) -> None:
    import asyncio

    from provisioner.store.sqlite import SqliteStore

    async def put() -> None:
        store = SqliteStore(path)
        try:
            await store.put(key, value)
        finally:
            await store.close()

    asyncio.run(put())


def _get(path: Path, key: str) -> bytes:
    import asyncio

    from provisioner.store.sqlite import SqliteStore

    async def get() -> bytes:
        store = SqliteStore(path)
        try:
            kv = await store.get(key)
            assert kv is not None
            return kv.value
        finally:
            await store.close()

    return asyncio.run(get())
