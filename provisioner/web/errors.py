"""Errors -> HTTP, translated once for both FastAPI apps (the admin API and the scheduler).

Every error body is {"error": CODE, "message": ...}, for our own errors, for FastAPI's
validation errors (422, or 400 for a body that is not JSON), for routing errors (404, 405) and
for bugs (500, with the detail only in the log). `responses()` declares the same bodies in
the OpenAPI schema, so clients and schemathesis see every status a route can answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from provisioner.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    HandoffError,
    ImageNotFound,
    InvalidTransition,
    NotFound,
    PowerError,
    ProvisionerError,
    StoreUnavailable,
    TemplateError,
    Unauthorized,
    ValidationError,
)

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error: a stable code for scripts and a message that says what to do."""

    error: str = Field(examples=["not_found"])
    message: str = Field(examples=["no node 'node9'; see `provisioner node list`"])


#: the first entry the error is an instance of answers: subclasses before their bases
STATUS: list[tuple[type[ProvisionerError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (ImageNotFound, 404, "not_found"),
    (InvalidTransition, 409, "invalid_transition"),
    (Conflict, 409, "conflict"),
    (ValidationError, 422, "invalid"),
    (PowerError, 502, "power"),
    (HandoffError, 503, "handoff"),
    (StoreUnavailable, 503, "store_unavailable"),
    (TemplateError, 500, "render"),
    (ConfigError, 500, "config"),
]
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "too_large",
              415: "unsupported_media_type", 422: "invalid", 501: "not_implemented"}
DESCRIPTIONS = {
    400: "The body is not valid JSON or is nested too deeply", 401: "No or bad bearer token",
    403: "The token's role does not allow this", 404: "No such object",
    409: "It changed meanwhile, or its state does not allow this",
    413: "The body is larger than the service's max_body setting", 422: "A field was refused",
    500: "A bug or a failed render; the log has the detail",
    502: "The node's power controller failed",
    503: "The store, or the scheduler behind it, did not answer",
}


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


#: a bug's answer: its detail goes to the log only
INTERNAL = error_body("internal", "internal error; the appliance log has the detail")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` declaring the uniform error body for each status."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS.get(code, "Error")}
            for code in codes}


def translate(exc: ProvisionerError) -> JSONResponse:
    for kind, status, code in STATUS:
        if isinstance(exc, kind):
            # RFC 9110 section 15.5.2: a 401 names the scheme that would be accepted.
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse(error_body(code, exc.message), status_code=status,
                                headers=headers)
    return JSONResponse(error_body("error", exc.message), status_code=500)


def _validation_message(errors: Sequence[Any]) -> tuple[int, str, str]:
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "bad_json", "the body is not valid JSON; send a JSON object"
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return 422, "invalid", "; ".join(parts) + "; see /docs for the expected fields"


def install(app: FastAPI) -> None:
    @app.exception_handler(ProvisionerError)
    async def _ours(request: Request, exc: ProvisionerError) -> JSONResponse:
        response = translate(exc)
        if response.status_code >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc.errors())
        return JSONResponse(error_body(code, message), status_code=status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return JSONResponse(error_body(code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(INTERNAL, status_code=500)
