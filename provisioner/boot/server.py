"""The boot-plane HTTP server: asyncio streams, files sent with loop.sendfile (zero-copy).

Why not the FastAPI app: Starlette's FileResponse reads 64 KiB chunks through a worker thread;
measured on these machines it delivered 0.3-0.5 GB/s for a 1 GiB image where a sendfile server
delivers 1.2-1.6 GB/s, and images are what every booting node waits for. The admin and node
APIs stay in FastAPI; this server only answers GET and HEAD under /boot/.

Routes: /boot/images/NAME/VERSION/FILE from the image directory (files.py), and any prefix
registered with `route()` for content rendered per request (iPXE scripts, overlays).

Every connection is bounded (limits.py has the defaults and why): admission.py decides whether
it may open at all (per address, in all, the reserve for leased addresses); the request head
must arrive within header_timeout, the next request on a kept-alive connection within
idle_timeout, and each WRITE_CHUNK of a reply must be taken within write_timeout, else the
connection is aborted (not closed: a close would wait on a client that does not read).

`counters` (the appliance's "boot" counters): requests, files, bytes, not_found, errors,
range_refused, http_<status> for bad requests; refused:<reason> for connections over a cap
(admission.py); timeout:header, timeout:idle, timeout:write for connections dropped on a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from provisioner.boot.admission import FULL, PER_SOURCE, RESERVED, ConnectionAdmission
from provisioner.boot.files import IMAGES_PREFIX, BootFile, open_boot_file
from provisioner.boot.httpcore import (
    MAX_HEAD,
    BadRequest,
    HttpRequest,
    Unsatisfiable,
    choose_span,
    etag_matches,
    parse_head,
    response_head,
)
from provisioner.errors import NotFound, ProvisionerError
from provisioner.limits import BootLimits
from provisioner.metrics import hooks

log = logging.getLogger(__name__)

WRITE_CHUNK = 4 << 20  # bytes of a file sent per sendfile call, each within write_timeout


@dataclass(frozen=True, slots=True)
class Reply:
    """A rendered answer from a route handler."""

    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200


Handler = Callable[[HttpRequest, str], Awaitable[Reply]]


class _Deadline(Exception):
    """A connection missed one of its deadlines; it is aborted."""


def _no_lease(source: str) -> bool:
    return False


class BootHttpServer:
    def __init__(self, images: Path, limits: BootLimits | None = None, *,
                 holds_lease: Callable[[str], bool] = _no_lease,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`holds_lease(address)`: whether that address is one of our nodes' (its lease,
        static address or sighting); only such an address may use the reserved connections."""
        self.images = images
        self.limits = limits or BootLimits()
        self.counters: collections.Counter[str] = collections.Counter()
        self._routes: list[tuple[str, Handler]] = []
        self._server: asyncio.Server | None = None
        self._holds_lease = holds_lease
        self._clock = clock
        self.admission = ConnectionAdmission(self.limits.max_connections,
                                             self.limits.reserved_connections,
                                             self.limits.max_per_source)
        #: connections open now (a graceful stop waits for them)
        self.open_connections = 0
        #: kept-alive connections waiting for their next request: a graceful stop ends them
        self._idle: set[asyncio.StreamWriter] = set()
        self._stopping = False

    def route(self, prefix: str, handler: Handler) -> None:
        self._routes.append((prefix, handler))

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, host: str, port: int) -> None:
        _raise_file_limit(self.limits.max_connections * 2 + 64)  # a socket and a file each
        self._server = await asyncio.start_server(self._counted, host, port,
                                                  limit=MAX_HEAD, reuse_address=True)
        log.info("boot http: listening on http://%s:%d/boot/, images in %s", *self.address,
                 self.images)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def stop_listening(self) -> None:
        """Refuse new connections (a graceful stop). A request under way goes on (see
        `open_connections`); a kept-alive connection waiting for its next request is ended, and
        no connection is kept alive after its current request."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._idle):
            writer.transport.abort()

    async def _counted(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        # Python 3.11's Server.wait_closed does not wait for open connections: count them.
        self.open_connections += 1
        try:
            await self._connection(reader, writer)
        finally:
            self.open_connections -= 1

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        client = str(peer[0])
        refused = self.admission.admit(client, self._holds_lease)
        if refused is not None:
            self._refuse(client, refused)
            writer.transport.abort()
            return
        aborted = False
        try:
            first = True
            while await self._one_request(reader, writer, client, first):
                first = False
        except _Deadline:
            aborted = True
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.admission.release(client)
            await _end(writer, aborted)

    def _refuse(self, client: str, reason: str) -> None:
        self.counters[f"refused:{reason}"] += 1
        hooks.refused("boot", reason)
        if self.admission.log_due(client, self._clock()):
            log.warning("boot http: refused a connection from %s: %s (it holds %d; %d "
                        "refused so far; next line about this source in a minute at the "
                        "earliest)", client, _REFUSALS[reason], self.admission.held_by(client),
                        sum(v for k, v in self.counters.items() if k.startswith("refused:")))

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        """The next request head, or None at the end of the connection. On a kept-alive
        connection the first byte must come within idle_timeout; the whole head, from that byte
        (or from the connect), within header_timeout."""
        start = b""
        if not first:
            try:
                async with asyncio.timeout(self.limits.idle_timeout):
                    start = await reader.read(1)
            except TimeoutError:
                self.counters["timeout:idle"] += 1
                return None
            if not start:
                return None
        try:
            async with asyncio.timeout(self.limits.header_timeout):
                return start + await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.counters["timeout:header"] += 1
            raise _Deadline from None

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           client: str, first: bool) -> bool:
        """Serve one request; return whether to keep the connection open."""
        if self._stopping:
            return False
        if not first:
            self._idle.add(writer)
        try:
            head = await self._read_head(reader, first)
        except asyncio.LimitOverrunError:
            await self._error(writer, BadRequest("request head too large", 431))
            return False
        except asyncio.IncompleteReadError:
            return False
        finally:
            self._idle.discard(writer)
        if head is None:
            return False
        try:
            request = parse_head(head[:-4])
        except BadRequest as exc:
            await self._error(writer, exc)
            return False
        self.counters["requests"] += 1
        if request.headers.get("content-length", "0") not in ("", "0") or \
                "transfer-encoding" in request.headers:
            await self._error(writer, BadRequest("request bodies are not accepted here", 413))
            return False
        if request.method not in ("GET", "HEAD"):
            await self._send(writer, request, Reply(b"only GET and HEAD\n", status=405),
                             extra={"Allow": "GET, HEAD"})
            return request.keep_alive
        await self._dispatch(writer, request, client)
        return request.keep_alive

    async def _dispatch(self, writer: asyncio.StreamWriter, request: HttpRequest,
                        client: str) -> None:
        try:
            if request.path.startswith(IMAGES_PREFIX):
                await self._send_file(writer, request, open_boot_file(self.images, request.path))
                return
            for prefix, handler in self._routes:
                if request.path.startswith(prefix):
                    reply = await handler(request, client)
                    await self._send(writer, request, reply)
                    hooks.http_served(request.path, reply.status,
                                      len(reply.body) if request.method == "GET" else 0)
                    return
            raise NotFound(f"{request.path}: no such boot resource")
        except NotFound as exc:
            self.counters["not_found"] += 1
            await self._send(writer, request, Reply(f"{exc.message}\n".encode(), status=404))
        except ProvisionerError as exc:
            self.counters["errors"] += 1
            log.warning("boot http: %s %s for %s: %s", request.method, request.path, client, exc)
            await self._send(writer, request, Reply(f"{exc.message}\n".encode(), status=500))

    async def _send_file(self, writer: asyncio.StreamWriter, request: HttpRequest,
                         file: BootFile) -> None:
        with os.fdopen(file.fd, "rb", buffering=0) as handle:
            headers = {"Content-Type": file.content_type, "ETag": file.etag,
                       "Accept-Ranges": "bytes"}
            if etag_matches(request.headers.get("if-none-match"), file.etag):
                writer.write(response_head(304, headers, keep_alive=request.keep_alive))
                await self._drain(writer)
                return
            try:
                span = choose_span(_range_header(request, file.etag), file.size)
            except Unsatisfiable as exc:
                self.counters["range_refused"] += 1
                body = f"{exc}\n".encode()
                await self._send(writer, request, Reply(body, status=416),
                                 extra={"Content-Range": f"bytes */{file.size}"})
                return
            length = span.end - span.start
            headers["Content-Length"] = str(length)
            if span.partial:
                headers["Content-Range"] = f"bytes {span.start}-{span.end - 1}/{file.size}"
            writer.write(response_head(206 if span.partial else 200, headers,
                                       keep_alive=request.keep_alive))
            await self._drain(writer)
            if request.method == "GET" and length:
                await self._sendfile(writer, handle, span.start, span.end)
                self.counters["bytes"] += length
            self.counters["files"] += 1
            hooks.http_served(request.path, 206 if span.partial else 200,
                              length if request.method == "GET" else 0)

    async def _sendfile(self, writer: asyncio.StreamWriter, handle: BinaryIO, start: int,
                        end: int) -> None:
        """Bytes [start, end) of the file, WRITE_CHUNK at a time, each within write_timeout:
        a whole image may take minutes on a slow link, a client that stopped reading may not."""
        loop = asyncio.get_running_loop()
        offset = start
        while offset < end:
            count = min(WRITE_CHUNK, end - offset)
            try:
                async with asyncio.timeout(self.limits.write_timeout):
                    await loop.sendfile(writer.transport, handle, offset, count)
            except TimeoutError:
                self.counters["timeout:write"] += 1
                raise _Deadline from None
            offset += count

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await writer.drain()
        except TimeoutError:
            self.counters["timeout:write"] += 1
            raise _Deadline from None

    async def _send(self, writer: asyncio.StreamWriter, request: HttpRequest, reply: Reply,
                    extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body)),
                   **(extra or {})}
        writer.write(response_head(reply.status, headers, keep_alive=request.keep_alive))
        if request.method != "HEAD":
            writer.write(reply.body)
        await self._drain(writer)

    async def _error(self, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        self.counters[exc.reason] += 1
        body = f"{exc.message}\n".encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        writer.write(response_head(exc.status, headers, keep_alive=False) + body)
        with contextlib.suppress(ConnectionError):
            await self._drain(writer)


def _range_header(request: HttpRequest, etag: str) -> str | None:
    """The Range to honour: none when If-Range names another version (RFC 9110 13.1.5)."""
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    return request.headers.get("range")


_REFUSALS: Final = {
    PER_SOURCE: "it has as many connections open as one address may (boot.max_per_source)",
    FULL: "every connection slot is taken (boot.max_connections)",
    RESERVED: "only the slots reserved for our nodes' addresses are left "
              "(boot.reserved_connections) and it holds no lease",
}


async def _end(writer: asyncio.StreamWriter, aborted: bool) -> None:
    """Close the connection; abort it (drop what is unsent) when it missed a deadline: a
    graceful close would keep the socket until a client that does not read took the rest."""
    if aborted:
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)
    if writer.transport.get_write_buffer_size():  # still unsent after 5 s: not read
        writer.transport.abort()


def _raise_file_limit(wanted: int) -> None:
    """A socket per connection and a file per sendfile: lift the soft descriptor limit toward
    the hard one, or accept() fails with EMFILE and asyncio pauses the listener."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
