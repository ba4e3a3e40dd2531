"""The handoff's small HTTP/1.1 client against scripted servers on loopback: keep-alive,
a connection the server dropped while idle, chunked and close-delimited answers, bad answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from provisioner.errors import HandoffError
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.handoff.http import JsonHttp
from tests.support.etcd_server import free_port

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": 1.5}'

Script = Callable[[int, bytes], tuple[bytes, bool]]  # (connection no., request) -> answer, close


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Answers each request by `script`; records the requests, one entry per connection."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(seen)
        seen.append(b"")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                seen[number] += request
                answer, close = script(number, request)
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        srv.close()
        await srv.wait_closed()


async def test_keeps_the_connection_alive() -> None:
    async with server(lambda n, r: (OK, False)) as (url, seen):
        client = JsonHttp(url)
        assert await client.request("PUT", "/a", {"x": 1}) == (200, {"ok": 1.5})
        assert await client.request("GET", "/b") == (200, {"ok": 1.5})
        await client.close()
    assert len(seen) == 1
    assert seen[0].startswith(b"PUT /a HTTP/1.1\r\n") and seen[0].count(b"HTTP/1.1\r\n") == 2
    assert b'Content-Length: 7\r\n\r\n{"x":1}' in seen[0]


async def test_a_connection_dropped_while_idle_is_replaced() -> None:
    # The server closes after each answer without saying so, as uvicorn does with idle
    # keep-alive connections: the next request fails unanswered and is sent again.
    async with server(lambda n, r: (OK, True)) as (url, seen):
        client = JsonHttp(url)
        for _ in range(3):
            assert await client.request("PUT", "/a", {}) == (200, {"ok": 1.5})
            await asyncio.sleep(0.05)
        await client.close()
    assert len(seen) == 3


async def test_chunked_and_close_delimited_answers() -> None:
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"a\"\r\n3;ext=1\r\n: 2\r\n1\r\n}\r\n0\r\n\r\n")
    until_close = b"HTTP/1.0 409 Conflict\r\n\r\n{\"message\": \"m\"}"
    answers = {0: (chunked, False), 1: (until_close, True)}
    async with server(lambda n, r: answers.get(n, (OK, False))) as (url, _):
        client = JsonHttp(url)
        assert await client.request("POST", "/x", {}) == (201, {"a": 2})
        client._idle.clear()  # force a second connection for the close-delimited answer
        assert await client.request("POST", "/y", {}) == (409, {"message": "m"})
        assert client._idle == []  # a close-delimited answer cannot be followed on it
        await client.close()


async def test_204_and_plain_text_errors() -> None:
    answers = [b"HTTP/1.1 204 No Content\r\n\r\n",
               b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nbad url"]
    async with server(lambda n, r: (answers.pop(0), False)) as (url, _):
        client = JsonHttp(url)
        assert await client.request("POST", "/p") == (204, None)
        assert await client.request("POST", "/p") == (400, {"message": "bad url"})
        await client.close()


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}"])
async def test_garbled_answers_are_connection_errors(answer: bytes) -> None:
    async with server(lambda n, r: (answer, True)) as (url, _):
        client = JsonHttp(url, timeout=2)
        with pytest.raises(ConnectionError):
            await client.request("GET", "/")
        await client.close()


async def test_silence_is_a_timeout_and_nobody_is_refused() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    srv = await asyncio.start_server(mute, "127.0.0.1", 0)
    client = JsonHttp(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", timeout=0.3)
    with pytest.raises(TimeoutError, match=r"no answer within 0\.3 s"):
        await client.request("GET", "/")
    srv.close()
    with pytest.raises(OSError):
        await JsonHttp(f"http://127.0.0.1:{free_port()}").request("GET", "/")


async def test_only_plain_http_urls_and_https_goes_through_httpx() -> None:
    with pytest.raises(ValueError, match="only http://"):
        JsonHttp("https://sched:8090")
    handoff = BuiltinHandoff("https://sched.invalid:8090", timeout=0.5)
    with pytest.raises(HandoffError, match="not answering"):
        await handoff.resume("n1")
    await handoff.close()
