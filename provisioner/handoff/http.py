"""A small HTTP/1.1 JSON client for one `http://` origin, with kept-alive connections.

Why not httpx here: the handoff sends one small request per booted node, 200 a second at the
target rate, from inside the appliance's event loop. httpx spends about 1.0 ms of CPU on such a
request (0.6 ms with bare httpcore); this client 0.1 ms (measured against the scheduler on
loopback, 1000 sequential PUTs). The scheduler is our own uvicorn app, so the dialect is
narrow: answers carry Content-Length (or are chunked, or end at close).

Requests here are idempotent (PUT a node, drain, resume, GET): a kept-alive connection the
server closed while idle fails before any answer arrives, and the request is sent once more on a
new connection. Errors are mapped once, here: every failure to get an answer is OSError.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
IDLE = 2.0  # seconds a connection may idle before reuse; uvicorn drops idle ones after 5 s


class KeptAliveConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class JsonHttp:
    def __init__(self, url: str, *, timeout: float = 5.0, pool: int = 32,
                 headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: only http://HOST[:PORT] URLs are supported")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base = parts.path.rstrip("/")
        self.authority = parts.netloc
        self.timeout = timeout
        self.pool_size = pool
        self._idle: list[KeptAliveConnection] = []
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send `body` as JSON; return the status and the decoded JSON answer (None if empty).
        Raises OSError when no answer arrives (refused, reset, timed out, garbled)."""
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = (f"{method} {self.base}{path} HTTP/1.1\r\nHost: {self.authority}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"{self._extra}\r\n")
        message = head.encode() + payload
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._take()
                if conn is not None:
                    try:
                        return await self._exchange(conn, message, method)
                    except _Stale:
                        pass  # closed by the server while idle: once more on a new connection
                conn = KeptAliveConnection(*await asyncio.open_connection(self.host, self.port))
                try:
                    return await self._exchange(conn, message, method)
                except _Stale:
                    raise ConnectionResetError("the connection closed before an answer") from None
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.timeout:g} s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise ConnectionError(f"unreadable answer: {exc}") from None

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def _take(self) -> KeptAliveConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < IDLE and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _exchange(self, conn: KeptAliveConnection, message: bytes, method: str
                        ) -> tuple[int, Any]:
        try:
            conn.writer.write(message)
            await conn.writer.drain()
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            conn.close()
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            raise _Stale() from None
        except BaseException:
            conn.close()
            raise
        try:
            status, headers = _parse_head(head)
            data = await _read_body(conn.reader, headers, status, method)
        except BaseException:
            conn.close()
            raise
        if headers.get("connection", "").lower() == "close" or len(self._idle) >= self.pool_size:
            conn.close()
        else:
            conn.used = time.monotonic()
            self._idle.append(conn)
        return status, _decode(data)


def _decode(data: bytes) -> Any:
    """JSON, or for a server's plain-text error page {"message": its text}."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"message": data[:200].decode("utf-8", "replace")}


class _Stale(Exception):
    """The connection ended before any byte of an answer: the request was not processed."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], status: int,
                     method: str) -> bytes:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"Content-Length {length} out of range")
        return await reader.readexactly(length)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    headers["connection"] = "close"  # the body ends where the connection does
    try:
        await reader.readexactly(MAX_BODY + 1)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    raise ValueError("answer body too large")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    for _ in range(MAX_BODY):
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > MAX_BODY:
            break
    raise ValueError("chunked answer too large")
