"""The boot plane's sans-IO HTTP core: request heads, Range decisions, ETag matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.boot.httpcore import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_RANGES,
    BadRequest,
    HttpRequest,
    Span,
    Unsatisfiable,
    choose_span,
    etag_matches,
    parse_head,
    response_head,
)

# -- parse_head ------------------------------------------------------------------------------


def test_parse_good_get() -> None:
    request = parse_head(b"GET /boot/images/rocky/9.4/vmlinuz?x=1 HTTP/1.1\r\n"
                         b"Host: 10.0.0.1\r\nUser-Agent: iPXE/1.21.1\r\nRange:  bytes=0-99 ")
    assert request == HttpRequest("GET", "/boot/images/rocky/9.4/vmlinuz", "HTTP/1.1",
                              {"host": "10.0.0.1", "user-agent": "iPXE/1.21.1",
                               "range": "bytes=0-99"})
    assert request.keep_alive


def test_parse_head_method_and_percent_decoding() -> None:
    request = parse_head(b"HEAD /boot/images/a%20b/v1/f%C3%A9 HTTP/1.1")
    assert request.method == "HEAD"
    assert request.path == "/boot/images/a b/v1/f\u00e9"
    assert request.headers == {}


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Close", False),
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "close", False),
])
def test_keep_alive_rules(version: str, connection: str | None, keep_alive: bool) -> None:
    head = f"GET / {version}" + (f"\r\nConnection: {connection}" if connection else "")
    assert parse_head(head.encode()).keep_alive is keep_alive


@pytest.mark.parametrize("head", [
    b"",
    b"GET",
    b"GET /",
    b"GET  / HTTP/1.1",
    b"GET / HTTP/1.1 extra",
    b"GET boot/images HTTP/1.1",  # not origin-form
    b"GET http://host/boot HTTP/1.1",  # absolute-form is not offered
    b"GET /\tx HTTP/1.1",
])
def test_bad_request_line(head: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == 400
    assert caught.value.reason == "http_400"


@pytest.mark.parametrize("head", [
    "GET /caf\u00e9 HTTP/1.1".encode(),
    b"GET / HTTP/1.1\r\nX-Name: \xff\xfe",
    b"GET /\x00 HTTP/1.1",
])
def test_non_ascii_or_control_bytes(head: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == 400


@pytest.mark.parametrize("target", ["/%ff", "/boot/images/a/b/c%00", "/a%0d%0aSet-Cookie:x",
                                    "/%7f"])
def test_bad_percent_encoding(target: str) -> None:
    """Not UTF-8, or a control character once decoded: 400, never another exception."""
    with pytest.raises(BadRequest) as caught:
        parse_head(f"GET {target} HTTP/1.1".encode())
    assert caught.value.status == 400


def test_too_many_headers() -> None:
    fields = "".join(f"\r\nX-{i}: {i}" for i in range(MAX_HEADERS))
    assert len(parse_head(f"GET / HTTP/1.1{fields}".encode()).headers) == MAX_HEADERS
    with pytest.raises(BadRequest) as caught:
        parse_head(f"GET / HTTP/1.1{fields}\r\nX-last: 1".encode())
    assert caught.value.status == 431


@pytest.mark.parametrize("line", [b"NoColon", b": empty-name", b"Name : value", b" Name: v",
                                  b""])
def test_bad_header_line(line: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n" + line)
    assert caught.value.status == 400


def test_huge_head() -> None:
    head = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD
    with pytest.raises(BadRequest) as caught:
        parse_head(head)
    assert caught.value.status == 431
    assert caught.value.reason == "http_431"


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "http/1.1", "FOO"])
def test_bad_version(version: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head(f"GET / {version}".encode())
    assert caught.value.status == 505


def test_response_head() -> None:
    head = response_head(206, {"Content-Length": "1"}, keep_alive=False)
    assert head == (b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1\r\n"
                    b"Connection: close\r\n\r\n")
    assert response_head(299, {}, keep_alive=True).startswith(b"HTTP/1.1 299 Unknown\r\n")


# -- choose_span -----------------------------------------------------------------------------

SIZE = 1000


@pytest.mark.parametrize(("header", "span"), [
    (None, Span(0, SIZE)),
    ("bytes=0-0", Span(0, 1, partial=True)),
    ("bytes=10-19", Span(10, 20, partial=True)),
    ("bytes=990-", Span(990, SIZE, partial=True)),
    ("bytes=-100", Span(900, SIZE, partial=True)),
    ("bytes=-5000", Span(0, SIZE, partial=True)),  # suffix longer than the file: all of it
    ("bytes=999-999", Span(999, SIZE, partial=True)),
    ("bytes=500-5000", Span(500, SIZE, partial=True)),  # last byte past the end: clamped
    ("bytes=0-" + "9" * 5000, Span(0, SIZE, partial=True)),
    ("bytes=" + "0" * 5000 + "5-" + "0" * 30 + "9", Span(5, 10, partial=True)),
    ("bytes=-" + "0" * 40 + "10", Span(990, SIZE, partial=True)),
    (" Bytes = 1-2 ", Span(1, 3, partial=True)),
    ("items=0-10", Span(0, SIZE)),  # unknown unit: ignored
    ("bytes", Span(0, SIZE)),  # no "=": not a bytes range at all
    ("bytes=0-1,5-9", Span(0, SIZE)),
    ("bytes=0-0,1-1,2-2", Span(0, SIZE)),
    (",".join(["bytes=0-0"] + ["1-1"] * (MAX_RANGES - 1)), Span(0, SIZE)),
])
def test_choose_span(header: str | None, span: Span) -> None:
    assert choose_span(header, SIZE) == span


@pytest.mark.parametrize("header", [
    "bytes=1000-",  # starts at the size
    "bytes=1000-2000",
    "bytes=5000-",
    "bytes=" + "9" * 5000 + "-",
    "bytes=abc",
    "bytes=5-2",
    "bytes=-0",
    "bytes=--1",
    "bytes=-",
    "bytes=",
    "bytes=1-2-3",
    "bytes=0x10-",
    "bytes=+1-2",
    "bytes=\u00b2-",  # str.isdigit() is true for these, int() is not (or reads them as 1)
    "bytes=\u0661-",
    "bytes=0-1,abc",
    ",".join(["bytes=0-0"] + ["1-1"] * MAX_RANGES),  # 17 ranges
    "bytes=" + ",".join(["0-0"] * 100),
])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        choose_span(header, SIZE)


def test_empty_file() -> None:
    assert choose_span(None, 0) == Span(0, 0)
    for header in ("bytes=0-", "bytes=0-0", "bytes=-1"):
        with pytest.raises(Unsatisfiable):
            choose_span(header, 0)


# -- etag_matches ----------------------------------------------------------------------------

TAG = '"0123abcd"'


@pytest.mark.parametrize(("if_none_match", "matches"), [
    (None, False),
    ("", False),
    (TAG, True),
    (f" {TAG} ", True),
    ("*", True),
    (" * ", True),
    (f'"other", {TAG}', True),
    (f'"other",{TAG}', True),
    (f"W/{TAG}", True),  # weak comparison (RFC 9110 13.1.2)
    ('"other"', False),
    ("0123abcd", False),  # unquoted: a different entity tag
    ('"0123abcd', False),
])
def test_etag_matches(if_none_match: str | None, matches: bool) -> None:
    assert etag_matches(if_none_match, TAG) is matches


def test_etag_matches_weak_own_tag() -> None:
    assert etag_matches(TAG, f"W/{TAG}")


# -- fuzzing ---------------------------------------------------------------------------------

_TOKENS = st.sampled_from(["GET", "HEAD", "POST", " ", "/", "%", "%2e", "%ff", "%00", "?",
                           "HTTP/1.1", "HTTP/1.0", "\r\n", ":", "Range", "bytes=", "-", ",",
                           "\t", "\x00", "\xe9", "a", "0"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(_TOKENS, max_size=40).map(lambda parts: "".join(parts).encode(
                     "latin-1")),
                 st.binary(min_size=MAX_HEAD - 2, max_size=MAX_HEAD + 2)))
def test_parse_head_fuzz(head: bytes) -> None:
    try:
        request = parse_head(head)
    except BadRequest as exc:
        assert exc.status in (400, 431, 505)
    else:
        assert isinstance(request, HttpRequest)
        assert request.path.startswith("/")
        assert request.version in ("HTTP/1.1", "HTTP/1.0")


_RANGE_PARTS = st.sampled_from(["bytes", "=", "-", ",", " ", "0", "1", "9", "10", "99999",
                                "\u00b2", "\u0661", "x", "items", "9" * 30])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60),
                 st.lists(_RANGE_PARTS, max_size=20).map("".join),
                 st.lists(_RANGE_PARTS, max_size=20).map(lambda p: "bytes=" + "".join(p))),
       st.integers(min_value=0, max_value=2**40))
def test_choose_span_fuzz(header: str | None, size: int) -> None:
    try:
        span = choose_span(header, size)
    except Unsatisfiable:
        return
    assert 0 <= span.start <= span.end <= size
    if span.partial:
        assert span.start < span.end
    else:
        assert span == Span(0, size)
