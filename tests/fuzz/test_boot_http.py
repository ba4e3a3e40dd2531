"""Malformed and made-up requests against the real boot plane (HTTP, provisioner/boot/server.py):
random bytes, and request heads built from drawn methods, targets (image files, scripts, paths
that climb out, percent-encoding), versions and headers (Range, If-Range, bodies announced).
Each goes on its own connection from 127.0.0.3. A head `parse_head` refuses must get its 4xx
(or 505) and be counted under its reason; nothing gets a 500. Then the node's script and its
image are served, byte for byte."""

from __future__ import annotations

import hashlib
import socket
from collections import Counter

import httpx
import pytest
from hypothesis import strategies as st

from provisioner.boot.httpcore import MAX_HEAD, BadRequest, parse_head
from tests.fuzz.bed import (
    BOOT_PORT,
    FUZZER,
    IMAGE,
    NODE_IP,
    NODE_MAC,
    SERVER,
    SIZES,
    FuzzBed,
    run_examples,
)

pytestmark = pytest.mark.netns
WAIT = 10.0
IMAGE_PATH = f"/boot/images/{IMAGE}/1/image.cpio.xz"
TARGETS = [IMAGE_PATH, f"/boot/images/{IMAGE}/1/vmlinuz", f"/boot/images/{IMAGE}/1/manifest.json",
           f"/boot/{NODE_MAC.value}.ipxe", "/boot/images/../../etc/passwd", "/boot/%2e%2e/x",
           "/boot/images/fuzz/current/vmlinuz", "*", "http://head/boot/", "/boot/%00", "/"]
HEADERS = [b"Range", b"If-Range", b"If-None-Match", b"Content-Length", b"Transfer-Encoding",
           b"Connection", b"Host", b"Expect"]
VALUES = st.sampled_from([b"bytes=0-0", b"bytes=-1", b"bytes=5-", b"bytes=0-1,3-4,0-9999999",
                          b"bytes=999999999-", b"bytes=a-b", b"0", b"chunked", b"close",
                          b"keep-alive", b"100-continue", b'"x"', b""]) | st.binary(max_size=60)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"get", b""]) |
                  st.binary(max_size=10))
    target = draw(st.sampled_from(TARGETS)).encode() + draw(st.binary(max_size=30))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 x", b""]))
    fields = draw(st.lists(st.tuples(st.sampled_from(HEADERS) | st.binary(max_size=20),
                                     VALUES), max_size=8))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    lines = [b" ".join((method, target, version)), *(k + b": " + v for k, v in fields)]
    tail = draw(st.sampled_from([b"\r\n\r\n", b""]) | st.binary(max_size=20))
    return eol.join(lines) + tail


REQUESTS = st.one_of(st.binary(max_size=600), heads(),
                     st.binary(min_size=MAX_HEAD, max_size=MAX_HEAD + 100))


def _exchange(data: bytes) -> bytes:
    """Send `data` on a fresh connection, end the sending side, read until the server closes."""
    with socket.create_connection((SERVER, BOOT_PORT), WAIT, (FUZZER, 0)) as conn:
        answer = bytearray()
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed before reading all we sent
        return bytes(answer)


def _expected(data: bytes) -> BadRequest | None:
    """The refusal the server must answer with, when it reads a head and cannot parse it."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > MAX_HEAD:
        return None
    try:
        parse_head(data[:end])
    except BadRequest as exc:
        return exc
    return None


@pytest.mark.parametrize("count", SIZES)
def test_malformed_requests_get_a_4xx_and_are_counted_and_files_are_still_served(
        bed: FuzzBed, count: int) -> None:
    before = Counter(bed.counters("boot"))
    refused: Counter[str] = Counter()

    def check(data: bytes) -> None:
        answer = _exchange(data)
        status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else None
        assert status != 500, answer[:300]
        expected = _expected(data)
        if expected is not None:
            assert status == expected.status, (data[:200], answer[:200])
            refused[expected.reason] += 1

    run_examples(bed, REQUESTS, check, count)
    counted = Counter(bed.counters("boot")) - before
    assert sum(refused.values()) > count // 20, refused
    assert all(counted[reason] >= n for reason, n in refused.items()), (counted, refused)
    assert counted["errors"] == 0
    _still_served(bed)
    bed.healthy()


def _still_served(bed: FuzzBed) -> None:
    def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.HTTPTransport(local_address=NODE_IP)
        with httpx.Client(base_url=f"http://{SERVER}:{BOOT_PORT}", transport=transport,
                          timeout=WAIT) as node:
            return node.get(f"/boot/{NODE_MAC.value}.ipxe"), node.get(IMAGE_PATH)
    script, image = bed.inside(fetch)
    assert script.status_code == 200 and f"{IMAGE}:1" in script.text, script.text
    assert image.status_code == 200
    assert hashlib.sha256(image.content).digest() == hashlib.sha256(bed.image).digest()
