"""Malformed and made-up requests against the real admin API and node callback (uvicorn with
httptools, as `provisioner serve` runs them): drawn methods, paths, queries, bearer tokens,
content types and bodies (JSON of any shape, JSON nested past the depth cap, bytes that are not
JSON), from 127.0.0.3 and, for the callback, from the node's own address with a forged token.
None may get a 5xx; then an admin read answers 200 and the node's real callback makes it ready.
The API's own counters are its answers' status codes: every refused input is a 4xx."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import strategies as st

from tests.fuzz.bed import API_PORT, FUZZER, NODE_IP, NODE_MAC, SERVER, SIZES, FuzzBed, run_examples

pytestmark = pytest.mark.netns
WAIT = 10.0
BASE = f"http://{SERVER}:{API_PORT}"
# Paths of every admin resource (not the fuzz node's own: a made-up PATCH may not change it)
PATHS = ["/api/v1/nodes", "/api/v1/nodes/n1", "/api/v1/nodes/02:00:00:00:00:09",
         "/api/v1/nodes/n1/events", "/api/v1/nodes/n1/accept", "/api/v1/nodes/n1/power",
         "/api/v1/groups", "/api/v1/groups/g1", "/api/v1/images", "/api/v1/images/x/current",
         "/api/v1/images/x/prune", "/api/v1/leases", "/api/v1/settings", "/api/v1/counters",
         "/api/v1/audit", "/api/v1/tokens", "/api/v1/tokens/1", "/api/v1/reimage",
         "/api/v1/reimage/abc", "/healthz", "/docs", "/openapi.json", "/node/v1/booted"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "mac", "ip", "image", "groups", "settings", "state", "role",
                         "nodes", "token", "version", "facts", "limit"]) | st.text(max_size=8),
        inner, max_size=5),
    max_leaves=12)
BODIES = st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300),
                   st.integers(30, 200).map(lambda n: b"[" * n + b"]" * n))


@st.composite
def admin_requests(draw: st.DrawFn, admin: str) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS)) + draw(st.sampled_from(["", "/", "/x", "%00", "/.."]) |
                                               st.text(max_size=12).map(quote))
    query = draw(st.dictionaries(st.sampled_from(["limit", "after", "state", "group", "x"]),
                                 st.text(max_size=12), max_size=3))
    token = draw(st.sampled_from([admin, admin, "", "x", admin + "x"]) | st.text(max_size=20))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return {"method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
                                            "OPTIONS"])),
            "url": path, "params": query, "headers": _latin1(headers), "content": draw(BODIES)}


@st.composite
def callbacks(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "mac": draw(st.sampled_from([NODE_MAC.value, NODE_MAC.value.upper(), "x"]) |
                    st.text(max_size=40)),
        "token": draw(st.text(max_size=300)),
        "image": draw(st.sampled_from(["fuzz", ""]) | st.text(max_size=140)),
        "version": draw(st.sampled_from(["1", ""]) | st.text(max_size=20)),
        "facts": draw(JSON)}
    body = {k: v for k, v in fields.items() if draw(st.booleans())}
    content = draw(st.just(json.dumps(body).encode()) | BODIES)
    return {"method": "POST", "url": "/node/v1/booted", "content": content,
            "headers": {"Content-Type": "application/json"}}


def _latin1(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as a client can send them: latin-1 bytes without control characters."""
    return {k: "".join(c for c in v if c.isprintable()).strip().encode("latin-1", "replace")
            for k, v in headers.items()}


def _refusals(bed: FuzzBed, strategy: st.SearchStrategy[dict[str, Any]], source: str,
              count: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    client = httpx.Client(base_url=BASE, timeout=WAIT,
                          transport=httpx.HTTPTransport(local_address=source))

    def check(request: dict[str, Any]) -> None:
        answer = client.request(**request)
        statuses[answer.status_code] += 1
        assert answer.status_code < 500, (request, answer.status_code, answer.text[:300])

    try:
        run_examples(bed, strategy, check, count)
    finally:
        client.close()
    return statuses


@pytest.mark.parametrize("count", SIZES)
def test_made_up_admin_requests_are_refused_and_an_admin_read_still_answers(
        bed: FuzzBed, count: int) -> None:
    statuses = _refusals(bed, admin_requests(bed.admin), FUZZER, count)
    assert sum(n for status, n in statuses.items() if status >= 400) > count // 2, statuses
    node = bed.inside(lambda: httpx.get(f"{BASE}/api/v1/nodes/{NODE_MAC.value}", timeout=WAIT,
                                        headers={"Authorization": f"Bearer {bed.admin}"}))
    assert node.status_code == 200 and node.json()["name"] == "fuzz-node", node.text
    bed.healthy()


@pytest.mark.parametrize("count", SIZES)
def test_made_up_callbacks_are_refused_and_the_node_s_real_one_makes_it_ready(
        bed: FuzzBed, count: int) -> None:
    token = bed.provisioning_token()
    half = count // 2
    statuses = _refusals(bed, callbacks(), NODE_IP, half)
    statuses += _refusals(bed, callbacks(), FUZZER, count - half)
    assert statuses[200] == 0 and sum(statuses.values()) == count, statuses
    body = {"mac": NODE_MAC.value, "token": token, "image": "fuzz", "version": "1"}

    def call_back() -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=NODE_IP)) as node:
            return node.post(f"{BASE}/node/v1/booted", json=body, timeout=WAIT)

    answer = bed.inside(call_back)
    assert answer.status_code == 200 and answer.json()["state"] == "ready", answer.text
    bed.healthy()
