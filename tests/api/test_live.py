"""The API under a real uvicorn (httptools): real sockets, a streamed over-long body without
Content-Length, and the schemathesis run against our own OpenAPI schema (no 5xx, every
response as the schema declares it)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.api.conftest import api_settings
from tests.api.live import LiveApi
from tests.support.schema_run import schema_failures, schema_operations


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    base = tmp_path_factory.mktemp("live")
    server = LiveApi(api_settings(base), base / "store.db").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live_schema(live: LiveApi) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def test_a_real_client_over_a_real_socket(live: LiveApi) -> None:
    headers = {"Authorization": f"Bearer {live.admin}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=10) as client:
        made = client.post("/api/v1/nodes", json={"mac": "52:54:00:00:00:01", "name": "n1"})
        assert made.status_code == 201
        assert client.get("/api/v1/nodes/n1").json()["mac"] == "52:54:00:00:00:01"
        assert client.get("/api/v1/nodes").status_code == 200
        assert client.get("/api/v1/nodes/n1", headers={"Authorization": ""}).status_code == 401


def test_a_chunked_body_past_the_cap_is_cut_off_with_413(live: LiveApi) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /node/v1/booted HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        # 4 x 16 KiB fill the 64 KiB cap of api_settings() exactly; one more byte is over.
        # The answer comes at once, without waiting for the rest of the body.
        for chunk in [b" " * 16384] * 4 + [b" "]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head, body = _one_response(sock)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert json.loads(body)["error"] == "too_large"


def _one_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and the Content-Length body of one response (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return head, body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_matches_its_schema(live: LiveApi, live_schema: schemathesis.BaseSchema,
                                    mode: GenerationMode) -> None:
    """Every operation, MAX_EXAMPLES generated requests each (valid ones, then invalid ones):
    no 5xx, and every status, content type and body as the schema declares it."""
    assert len(schema_operations(live_schema)) >= 24
    failures = schema_failures(live_schema, live.url, mode,
                               headers={"Authorization": f"Bearer {live.admin}"})
    assert not failures, "\n\n".join(failures)


def test_schema_declares_errors_on_every_operation(live_schema: schemathesis.BaseSchema,
                                                   tmp_path: Path) -> None:
    raw = live_schema.raw_schema
    for path, operations in raw["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path.startswith("/api/v1"):
                assert {"401", "403"} <= codes, (method, path)
            if method in ("post", "put", "patch"):
                assert {"400", "413", "422"} <= codes, (method, path)
            for code in codes - {"200", "201", "202", "204"}:
                ref = operation["responses"][code]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
