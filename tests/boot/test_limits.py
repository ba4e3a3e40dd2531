"""The boot plane's connection caps and deadlines against real sockets on loopback.

Every source is its own loopback address (all of 127/8 reaches lo): one source opens idle
connections up to its cap and keeps reopening past it, strangers fill what is not reserved, and
a leased address (the server's `holds_lease` says so) still fetches its boot files; a client
that trickles its head, idles, or stops reading is dropped on its deadline. What is refused
is closed at once and counted. Bounds on time are generous: they catch a hang, not slowness.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from provisioner.boot.server import BootHttpServer
from provisioner.limits import BootLimits
from tests.boot.test_server import IMAGE, Images, images  # noqa: F401 (fixture)

FLOODER, LEASED = "127.0.0.2", "127.0.0.3"
WAIT = 10.0  # seconds anything expected may take (generous: the machine is shared)
Start = Callable[..., Awaitable[BootHttpServer]]


@pytest.fixture
async def boot(images: Images) -> AsyncIterator[Start]:  # noqa: F811
    servers: list[BootHttpServer] = []

    async def start(**limits: float) -> BootHttpServer:
        server = BootHttpServer(images.root, BootLimits(**limits),  # type: ignore[arg-type]
                                holds_lease=lambda source: source == LEASED)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def connect(server: BootHttpServer, source: str,
                  rcvbuf: int = 0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, server.address)
    return await asyncio.open_connection(sock=sock)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (EOF or reset) within WAIT."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionResetError:
        return True


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within {WAIT:.0f} s: {what}")


async def fetch(server: BootHttpServer, source: str) -> bytes:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=WAIT) as http:
        response = await http.get(f"http://127.0.0.1:{server.address[1]}{IMAGE}")
        assert response.status_code == 200
        return response.content


async def test_one_source_past_its_cap_is_closed_and_counted_and_a_leased_node_boots(
        boot: Start, images: Images, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    server = await boot(max_connections=64, reserved_connections=8, max_per_source=16)
    caplog.set_level(logging.WARNING, "provisioner.boot.server")
    held = [await connect(server, FLOODER) for _ in range(16)]
    await until(lambda: server.admission.held_by(FLOODER) == 16, "16 idle connections held")

    async def keep_reopening() -> int:
        closed = 0
        for _ in range(200):
            reader, writer = await connect(server, FLOODER)
            closed += await closed_by_server(reader)
            writer.close()
        return closed

    flood = asyncio.create_task(keep_reopening())
    body = await fetch(server, LEASED)
    assert hashlib.sha256(body).hexdigest() == images.image_sha
    assert await flood == 200  # every connection past the cap was closed by the server
    assert server.counters["refused:per_source"] == 200
    assert server.admission.held_by(FLOODER) == 16  # the held ones are still open
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 1 and FLOODER in lines[0]  # once a minute per source, with the address
    for _, writer in held:
        writer.close()
    await until(lambda: server.admission.open == 0, "every slot given back")


async def test_strangers_cannot_take_the_slots_reserved_for_leased_addresses(
        boot: Start, images: Images) -> None:  # noqa: F811
    server = await boot(max_connections=24, reserved_connections=8, max_per_source=6)
    held = []
    for i in range(4):  # 4 strangers x 6 would be 24: only 16 get in
        for _ in range(6):
            held.append(await connect(server, f"127.0.1.{i + 1}"))
    await until(lambda: server.counters["refused:reserved"] == 8, "8 strangers refused")
    assert server.admission.open == 16
    body = await fetch(server, LEASED)  # a reserved slot
    assert hashlib.sha256(body).hexdigest() == images.image_sha
    reader, writer = await connect(server, "127.0.1.9")  # yet another stranger
    assert await closed_by_server(reader)
    writer.close()
    assert server.counters["refused:reserved"] == 9
    for _, w in held:
        w.close()


async def test_a_trickled_head_and_an_idle_keepalive_are_dropped_on_their_deadlines(
        boot: Start) -> None:
    server = await boot(header_timeout=0.5, idle_timeout=0.5)
    reader, writer = await connect(server, FLOODER)
    writer.write(b"GET /boot/images/rocky/9.4/vmlinuz HTTP/1.1\r\nHost: x\r\n")  # no blank line
    assert await closed_by_server(reader)
    assert server.counters["timeout:header"] == 1
    reader, writer = await connect(server, FLOODER)
    writer.write(b"HEAD /boot/images/rocky/9.4/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" in head
    assert await closed_by_server(reader)  # no next request within idle_timeout
    assert server.counters["timeout:idle"] == 1
    await until(lambda: server.admission.open == 0, "both slots given back")


async def test_a_client_that_stops_reading_is_dropped_on_the_write_deadline(
        boot: Start, images: Images) -> None:  # noqa: F811
    big = images.root / "rocky" / "big" / "image.cpio.xz"
    big.parent.mkdir()
    with big.open("wb") as handle:  # sparse: more than any socket buffer, no disk used
        handle.truncate(256 << 20)
    server = await boot(write_timeout=0.5)
    _, writer = await connect(server, FLOODER, rcvbuf=4096)  # and never read
    writer.write(b"GET /boot/images/rocky/big/image.cpio.xz HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: server.counters["timeout:write"] == 1, "the write deadline")
    await until(lambda: server.admission.open == 0, "the slot given back")
    assert server.counters["bytes"] == 0  # the file was not counted as sent
    writer.transport.abort()


async def test_a_graceful_stop_ends_an_idle_keepalive_at_once(boot: Start) -> None:
    # idle_timeout is long: only the stop can end this connection within WAIT
    server = await boot(idle_timeout=300)
    reader, writer = await connect(server, LEASED)
    writer.write(b"HEAD /boot/images/rocky/9.4/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert b"keep-alive" in head
    await until(lambda: server.open_connections == 1, "the connection counted")
    server.stop_listening()
    assert await closed_by_server(reader)
    await until(lambda: server.open_connections == 0, "no connection left for the stop to wait on")
    assert server.counters["timeout:idle"] == 0
