"""ProvisionerError -> HTTP, translated once.

Every error body is {"error": CODE, "message": ...}.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from provisioner.errors import (
    ConfigError,
    Conflict,
    NotFound,
    ProvisionerError,
    StoreUnavailable,
    ValidationError,
)

STATUS: list[tuple[type[ProvisionerError], int, str]] = [
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (ValidationError, 422, "invalid"),
    (ConfigError, 500, "config"),
    (StoreUnavailable, 503, "store_unavailable"),
]


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def install(app: FastAPI) -> None:
    @app.exception_handler(ProvisionerError)
    async def _translate(request: Request, exc: ProvisionerError) -> JSONResponse:
        for kind, status, code in STATUS:
            if isinstance(exc, kind):
                return JSONResponse(error_body(code, exc.message), status_code=status)
        return JSONResponse(error_body("error", exc.message), status_code=500)
