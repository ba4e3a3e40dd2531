"""Errors -> HTTP for the scheduler app, the same shape as the appliance API:
{"error": CODE, "message": ...}. (api/ is a sibling layer, so it is not imported.)

Also the request body cap: a pure ASGI wrapper that refuses a body over the limit with 413,
whether the client announced its length or streams it chunked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from provisioner.errors import (
    Conflict,
    NotFound,
    ProvisionerError,
    StoreUnavailable,
    ValidationError,
)


class Unauthorized(ProvisionerError):
    """No or wrong bearer token; use the scheduler's [scheduler] token."""


STATUS: list[tuple[type[ProvisionerError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (ValidationError, 422, "invalid"),
    (StoreUnavailable, 503, "store_unavailable"),
]
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "too_large", 415: "unsupported_media_type"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def install(app: FastAPI) -> None:
    @app.exception_handler(ProvisionerError)
    async def _provisioner(request: Request, exc: ProvisionerError) -> JSONResponse:
        for kind, status, code in STATUS:
            if isinstance(exc, kind):
                return JSONResponse(error_body(code, exc.message), status_code=status)
        return JSONResponse(error_body("error", exc.message), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                 for e in exc.errors()[:5]]
        return JSONResponse(error_body("invalid", "; ".join(parts) or "invalid request"),
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)


class BodyLimit:
    """Refuse request bodies larger than `limit` bytes with 413 before the app reads them."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send) -> None:
        body = (b'{"error":"too_large","message":"request body over %d bytes; '
                b'send a smaller script or command"}' % self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
