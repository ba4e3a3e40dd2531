"""The boot-plane HTTP server: asyncio streams, files sent with loop.sendfile (zero-copy).

Why not the FastAPI app: Starlette's FileResponse reads 64 KiB chunks through a worker thread;
measured on these machines it delivered 0.3-0.5 GB/s for a 1 GiB image where a sendfile server
delivers 1.2-1.6 GB/s, and images are what every booting node waits for. The admin and node
APIs stay in FastAPI; this server only answers GET and HEAD under /boot/.

Routes: /boot/images/NAME/VERSION/FILE from the image directory (files.py), and any prefix
registered with `route()` for content rendered per request (iPXE scripts, overlays).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

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

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may wait for its next request


@dataclass(frozen=True, slots=True)
class Reply:
    """A rendered answer from a route handler."""

    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200


Handler = Callable[[HttpRequest, str], Awaitable[Reply]]


class BootHttpServer:
    def __init__(self, images: Path, *, max_connections: int = 2048) -> None:
        self.images = images
        self.counters: collections.Counter[str] = collections.Counter()
        self._routes: list[tuple[str, Handler]] = []
        self._server: asyncio.Server | None = None
        #: connections open now (a graceful stop waits for them)
        self.open_connections = 0
        self._limit = asyncio.Semaphore(max_connections)

    def route(self, prefix: str, handler: Handler) -> None:
        self._routes.append((prefix, handler))

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, host: str, port: int) -> None:
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
        """Refuse new connections (a graceful stop); those open go on (see `open_connections`)."""
        if self._server is not None:
            self._server.close()

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
        async with self._limit:
            try:
                while await self._one_request(reader, writer, peer[0]):
                    pass
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 5)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           client: str) -> bool:
        """Serve one request; return whether to keep the connection open."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._error(writer, BadRequest("request head too large", 431))
            return False
        except asyncio.IncompleteReadError:
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
                    await self._send(writer, request, await handler(request, client))
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
                await writer.drain()
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
            await writer.drain()
            if request.method == "GET" and length:
                loop = asyncio.get_running_loop()
                await loop.sendfile(writer.transport, handle, span.start, length)
                self.counters["bytes"] += length
            self.counters["files"] += 1

    async def _send(self, writer: asyncio.StreamWriter, request: HttpRequest, reply: Reply,
                    extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body)),
                   **(extra or {})}
        writer.write(response_head(reply.status, headers, keep_alive=request.keep_alive))
        if request.method != "HEAD":
            writer.write(reply.body)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        self.counters[exc.reason] += 1
        body = f"{exc.message}\n".encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        writer.write(response_head(exc.status, headers, keep_alive=False) + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _range_header(request: HttpRequest, etag: str) -> str | None:
    """The Range to honour: none when If-Range names another version (RFC 9110 13.1.5)."""
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    return request.headers.get("range")
