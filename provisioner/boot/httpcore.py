"""HTTP/1.1 for the boot plane, sans-IO: parse a request head, choose a Range, build a reply head.

The boot plane only ever answers GET and HEAD for files and small rendered scripts, so this is
deliberately small: no request bodies, no chunked encoding, no multipart ranges.

Range handling (RFC 9110 section 14):
- one `bytes=` range is served as 206 with Content-Range; an unsatisfiable one is 416 with
  `Content-Range: bytes */SIZE` (section 15.5.17);
- a Range with another unit is ignored (section 14.2: "MUST ignore ... a range unit it does not
  understand") and the whole file is sent;
- several ranges are allowed to be ignored (we send the whole file, 200) up to MAX_RANGES;
  more than that, or a syntactically invalid specifier, is rejected with 416: section 14.2
  names many small or overlapping ranges as a sign of a broken client or an attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from provisioner.errors import MalformedPacket

MAX_HEAD: Final = 8192  # bytes of request line + headers
MAX_HEADERS: Final = 64
MAX_RANGES: Final = 16
REASONS: Final = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
                  404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
                  416: "Range Not Satisfiable", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error", 503: "Service Unavailable",
                  505: "HTTP Version Not Supported"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


class BadRequest(MalformedPacket):
    """The request could not be parsed; it gets a 4xx and the connection is closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, reason=f"http_{status}")
        self.status = status


def parse_head(head: bytes) -> HttpRequest:
    """Parse `head` (everything up to and excluding the blank line)."""
    if len(head) > MAX_HEAD:
        raise BadRequest("request head too large", 431)
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/"):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"unsupported version {version[:16]!r}", 505)
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too many header fields", 431)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    try:
        path = unquote(target.partition("?")[0], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("request target is not UTF-8 once percent-decoded") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise BadRequest("control character (NUL, CR, LF, ...) in the request target")
    return HttpRequest(method, path, version, headers)


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes [start, end) of the file; `partial` when it answers a Range (206)."""

    start: int
    end: int
    partial: bool = False


class Unsatisfiable(Exception):
    """Answer 416 with `Content-Range: bytes */SIZE`."""


def choose_span(range_header: str | None, size: int) -> Span:
    """What to send of a file of `size` bytes for this Range header (module docstring)."""
    whole = Span(0, size)
    if range_header is None:
        return whole
    unit, sep, spec = range_header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return whole  # an unknown unit is ignored
    ranges = spec.split(",")
    if len(ranges) > MAX_RANGES:
        raise Unsatisfiable(f"{len(ranges)} ranges requested; at most {MAX_RANGES}")
    spans = [_one_range(r.strip(), size) for r in ranges]
    if len(spans) > 1:
        return whole  # multipart/byteranges is not offered; the whole file answers
    return spans[0]


def _digits(text: str) -> bool:
    return text == "" or (text.isascii() and text.isdigit())  # not superscripts, not other scripts


def _int(digits: str) -> int:
    # int() refuses more than 4300 digits (and is slow well before): any position past
    # 10**18 is past the end of every file we serve, so it is clamped there.
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 18 else 10**18


def _one_range(text: str, size: int) -> Span:
    first, sep, last = text.partition("-")
    if not sep or not _digits(first) or not _digits(last):
        raise Unsatisfiable(f"invalid range {text[:40]!r}")
    if first == "":  # suffix: the last N bytes
        if last == "" or _int(last) == 0:
            raise Unsatisfiable(f"invalid range {text[:40]!r}")
        if size == 0:
            raise Unsatisfiable("suffix range of an empty file")
        return Span(max(size - _int(last), 0), size, partial=True)
    start = _int(first)
    end = size if last == "" else min(_int(last) + 1, size)
    if last != "" and _int(last) < start:
        raise Unsatisfiable(f"invalid range {text[:40]!r}")
    if start >= size:
        raise Unsatisfiable(f"range starts at {start}, the file has {size} bytes")
    return Span(start, end, partial=True)


def response_head(status: int, headers: dict[str, str], *, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 section 13.1.2: weak comparison of If-None-Match against our ETag."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))
