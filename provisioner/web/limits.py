"""Request body limits, enforced before any route sees the body (both apps install BodyLimit).

A pure ASGI middleware: it reads the body itself, at most `max_body` bytes, answering 413 as
soon as Content-Length or the stream itself goes past the cap (a client that sends no
Content-Length, or a chunked one, cannot stream more than the cap into memory). The 413 keeps
the connection open: the server then reads and drops the rest of the body, so the client gets
to read its answer (closing with unread data in the socket resets the connection, and the
client sees that instead). With
`max_depth`, a JSON body nested deeper than that is refused with 400 before it reaches the JSON
parser, whose recursion a deep document could otherwise exhaust; the admin API sets it, the
scheduler does not (its node agent posts raw job output, which may hold any brackets). The
checked body is then replayed to the app unchanged.
"""

from __future__ import annotations

import re
from typing import Final

from provisioner.web.asgi import App, Message, Receive, Scope, Send, send_json

MAX_DEPTH: Final = 32
_STRINGS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS: Final = re.compile(rb"[\[\]{}]")
_BODILESS: Final = frozenset(("GET", "HEAD", "OPTIONS"))


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects, ignoring brackets inside strings."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class BodyLimit:
    """`setting` names what to raise (`[api] max_body`) in the 413's message."""

    def __init__(self, app: App, max_body: int, setting: str, max_depth: int | None = None
                 ) -> None:
        self.app = app
        self.max_body = max_body
        self.setting = setting
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODILESS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._too_large(send)
            return
        body = await self._read(receive)
        if body is None:
            await self._too_large(send)
            return
        if self.max_depth is not None and json_depth(body) > self.max_depth:
            await send_json(send, 400, {"error": "too_deep", "message": (
                f"the JSON body is nested more than {self.max_depth} levels deep; flatten it")})
            return
        await self.app(scope, replay_body(body, receive), send)

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, {"error": "too_large", "message": (
            f"the request body is larger than {self.max_body} bytes; send less, or raise "
            f"{self.setting}")})

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def replay_body(body: bytes, original: Receive) -> Receive:
    """The body once, then the real channel (which reports the client's disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
