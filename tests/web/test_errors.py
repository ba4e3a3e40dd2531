"""The one error mapping both FastAPI apps install: each of our errors, FastAPI's own errors
and a bug answer {"error": CODE, "message": ...} with the status the table gives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

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
    RenderError,
    StoreUnavailable,
    Unauthorized,
    ValidationError,
)
from provisioner.web import errors

RAISED: list[tuple[ProvisionerError, int, str]] = [
    (Unauthorized("send a token"), 401, "unauthorized"),
    (Forbidden(), 403, "forbidden"),
    (NotFound("no node 'x'"), 404, "not_found"),
    (ImageNotFound(), 404, "not_found"),
    (InvalidTransition("n1", "booted", "new", ()), 409, "invalid_transition"),
    (Conflict(), 409, "conflict"),
    (ValidationError("mac", "not a MAC"), 422, "invalid"),
    (PowerError(), 502, "power"),
    (HandoffError(), 503, "handoff"),
    (StoreUnavailable(), 503, "store_unavailable"),
    (RenderError(), 500, "render"),
    (ConfigError(), 500, "config"),
    (ProvisionerError("something else"), 500, "error"),
]


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/raise/{index}")
    async def raise_one(index: int) -> None:
        raise RAISED[index][0]

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret detail")

    @app.post("/count")
    async def count(n: int) -> int:
        return n

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as found:
        yield found


@pytest.mark.parametrize("index", range(len(RAISED)))
async def test_each_of_our_errors_has_its_status(client: httpx.AsyncClient, index: int) -> None:
    exc, status, code = RAISED[index]
    response = await client.get(f"/raise/{index}")
    assert response.status_code == status
    assert response.json() == {"error": code, "message": exc.message}
    assert response.headers.get("www-authenticate") == ("Bearer" if status == 401 else None)


async def test_a_bug_answers_500_without_its_detail(client: httpx.AsyncClient) -> None:
    response = await client.get("/bug")
    assert response.status_code == 500
    assert response.json() == errors.INTERNAL and "secret" not in response.text


async def test_framework_errors_have_the_same_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nothing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert "/nothing" in missing.json()["message"]
    wrong = await client.delete("/bug")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    invalid = await client.post("/count", params={"n": "many"})
    assert (invalid.status_code, invalid.json()["error"]) == (422, "invalid")
    assert invalid.json()["message"].startswith("query.n: ")


def test_responses_declare_the_error_body_for_each_status() -> None:
    declared = errors.responses(401, 404, 418)
    assert set(declared) == {401, 404, 418}
    assert all(entry["model"] is errors.ErrorBody for entry in declared.values())
    assert declared[401]["description"] == errors.DESCRIPTIONS[401]
    assert declared[418]["description"] == "Error"
