"""One source floods the TFTP server with read requests, each from a new port, while a real
client (tftp-hpa's `tftp`) from another address fetches its file.

The cap is per IP address, not per (address, port): the flooder holds `max_per_client`
transfers and no more, every RRQ past it is answered ERROR 0 at once from port 69 and counted
(rejected:busy_client), the source is logged once with its address, and the other client is
served. All on loopback: the flooder is 127.0.0.2, the client 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import socket
from pathlib import Path

import pytest

from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.packet import Data, Error, ErrorCode, decode
from provisioner.tftp.server import TftpServer, TftpServerConfig
from provisioner.tftp.sources import SourceResolver
from tests.tftp.conftest import rrq

TFTP = shutil.which("tftp")
FLOODER = "127.0.0.2"
FLOOD = 300  # RRQs, each from its own socket
PER_CLIENT = 8
WAIT = 30.0  # seconds the real client may take (generous: the machine is shared)
pytestmark = pytest.mark.skipif(TFTP is None, reason="needs tftp-hpa's tftp (Debian tftp-hpa)")


async def flood(server: tuple[str, int]) -> list[socket.socket]:
    """FLOOD RRQs from FLOODER, each from a new port; the sockets, to read their answers."""
    sockets = []
    for i in range(FLOOD):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((FLOODER, 0))
        sock.setblocking(False)
        sock.sendto(rrq(b"boot.bin"), server)
        sockets.append(sock)
        if i % 10 == 0:
            await asyncio.sleep(0)  # let the server read and the real client run
    return sockets


async def answers(sockets: list[socket.socket]) -> list[tuple[object, int]]:
    """The first datagram each flooder socket got within WAIT: (packet, the sender's port).
    Some RRQs may never have been read: a burst past the listener's receive buffer is dropped
    by the kernel, as on a real network, and the server counts only what it read."""
    loop = asyncio.get_running_loop()

    async def first(sock: socket.socket) -> tuple[object, int] | None:
        try:
            data, sender = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 3)
        except TimeoutError:
            return None
        return decode(data), sender[1]

    got = await asyncio.gather(*(first(sock) for sock in sockets))
    return [answer for answer in got if answer is not None]


async def tftp_get(port: int, name: str, out: Path) -> None:
    assert TFTP is not None
    proc = await asyncio.create_subprocess_exec(
        TFTP, "-m", "binary", "127.0.0.1", str(port), "-c", "get", name, str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, output.decode()


async def test_a_source_flooding_from_new_ports_is_capped_and_another_is_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = os.urandom(256 * 1024 + 7)
    (tmp_path / "boot.bin").write_bytes(content)
    # A long first timeout: the flooder's transfers (never ACKed) outlive the test.
    config = TftpServerConfig(listen="127.0.0.1", port=0, max_transfers=64,
                              max_per_client=PER_CLIENT, session=SessionConfig(timeout=8.0))
    server = TftpServer(SourceResolver(tmp_path), config)
    await server.start()
    caplog.set_level(logging.WARNING, "provisioner.tftp.server")
    sockets: list[socket.socket] = []
    try:
        flooding = asyncio.create_task(flood(server.address))
        await tftp_get(server.address[1], "boot.bin", tmp_path / "fetched")
        sockets = await flooding
        got = await answers(sockets)
        assert hashlib.sha256((tmp_path / "fetched").read_bytes()).digest() == \
            hashlib.sha256(content).digest()
        started = [p for p, port in got if isinstance(p, Data) and port != server.address[1]]
        refused = [p.code for p, port in got if isinstance(p, Error) and port == server.address[1]]
        read = server.counters["requests"] - 1  # the flooder's RRQs the server read
        assert read > FLOOD // 2, f"most of the flood reached the server: {read}"
        assert len(started) == PER_CLIENT
        assert len(refused) == read - PER_CLIENT == server.counters["rejected:busy_client"]
        assert set(refused) == {ErrorCode.NOT_DEFINED}
        assert server.counters["served"] == 1  # the real client's
        assert server.active() == PER_CLIENT  # the flooder's, still waiting for ACKs
        lines = [r.getMessage() for r in caplog.records if "busy_client" in r.getMessage()]
        assert len(lines) == 1 and FLOODER in lines[0]
    finally:
        await server.close()
        for sock in sockets:
            sock.close()
