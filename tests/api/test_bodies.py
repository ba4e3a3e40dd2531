"""Bad bodies and bad routes: every one answers the uniform error body, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from provisioner.web.limits import MAX_DEPTH, json_depth
from tests.api.conftest import Api

LIMIT = 65536  # api_settings() sets [api] max_body to this


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def _chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("path", ["/api/v1/nodes", "/node/v1/booted", "/api/v1/groups"])
async def test_a_body_over_the_cap_gets_413_with_or_without_content_length(
        api: Api, path: str) -> None:
    big = await api.client.post(path, headers=api.admin, content=b" " * (LIMIT + 1))
    assert big.status_code == 413, big.text
    assert big.json()["error"] == "too_large" and "[api] max_body" in big.json()["message"]
    streamed = await api.client.post(path, headers=api.admin, content=_chunks(LIMIT * 4))
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "too_large"
    at_cap = await api.client.post(path, headers={**api.admin, "Content-Type":
                                                  "application/json"},
                                   content=b"{}" + b" " * (LIMIT - 2))
    assert at_cap.status_code == 422  # the cap itself is allowed; the empty object is not


async def test_deep_nesting_is_refused_before_parsing(api: Api) -> None:
    response = await api.client.post("/api/v1/nodes", headers={
        **api.operator, "Content-Type": "application/json"}, content=_nested(MAX_DEPTH + 1))
    assert response.status_code == 400 and response.json()["error"] == "too_deep"
    shallow = await api.client.post("/api/v1/nodes", headers={
        **api.operator, "Content-Type": "application/json"}, content=_nested(MAX_DEPTH))
    assert shallow.status_code == 422
    very = await api.client.post("/node/v1/booted", headers={"Content-Type": "application/json"},
                                 content=b"[" * 30000 + b"]" * 30000)
    assert very.status_code == 400


def test_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"12") == 0


async def test_invalid_json_is_400_and_a_wrong_shape_422(api: Api) -> None:
    headers = {**api.operator, "Content-Type": "application/json"}
    response = await api.client.post("/api/v1/nodes", headers=headers, content=b'{"mac": ')
    assert response.status_code == 400
    assert response.json() == {"error": "bad_json",
                               "message": "the body is not valid JSON; send a JSON object"}
    wrong = await api.client.post("/api/v1/nodes", headers=headers, content=b"[1, 2]")
    assert wrong.status_code == 422 and wrong.json()["error"] == "invalid"
    typed = await api.client.post("/api/v1/nodes", headers=api.operator,
                                  json={"mac": 5, "name": ["x"]})
    assert typed.status_code == 422
    assert "mac:" in typed.json()["message"] and "name:" in typed.json()["message"]


async def test_unknown_routes_and_methods(api: Api) -> None:
    missing = await api.client.get("/api/v1/nothing", headers=api.admin)
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found",
                              "message": "no route /api/v1/nothing; see /docs for the API"}
    wrong = await api.client.put("/api/v1/nodes", headers=api.admin)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


async def test_health_needs_no_token(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["store"] == "memory"
