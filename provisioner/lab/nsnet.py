"""Reach into the lab's namespace from the host side without a link to it.

The namespace has no route to the host by design. A thread may join a network namespace on its
own (setns(2) with CLONE_NEWNET acts on the calling thread only): every socket it creates
afterwards lives in the namespace, while the rest of the process stays where it was. The lab
uses one such thread to call the appliance's API and the scheduler, and to run store reads,
from `lab status`, `lab up`'s progress display and the tests.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from provisioner.errors import ConfigError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _enter(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


class HttpAnswer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {self.body[:200]!r})"


class Namespace:
    """A worker thread inside network namespace `name`; `close()` ends it."""

    def __init__(self, name: str) -> None:
        if not os.path.exists(f"/run/netns/{name}"):
            raise ConfigError(f"network namespace {name} does not exist (is the lab up?)")
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}",
                                        initializer=_enter, initargs=(name,))

    def call(self, fn: Callable[[], T], timeout: float = 60.0) -> T:
        return self._pool.submit(fn).result(timeout)

    def run(self, factory: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run a coroutine on a fresh event loop inside the namespace."""
        async def main() -> T:
            return await factory()
        return self.call(lambda: asyncio.run(main()), timeout)

    def http(self, method: str, url: str, *, body: Any = None, token: str | None = None,
             timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> HttpAnswer:
        """One HTTP request from inside the namespace; any status is returned, not raised
        (status 0: no answer at all)."""
        def send() -> HttpAnswer:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(url, data=data, method=method)
            if data is not None:
                request.add_header("Content-Type", "application/json")
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            for key, value in (headers or {}).items():
                request.add_header(key, value)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    return HttpAnswer(answer.status, answer.read())
            except urllib.error.HTTPError as exc:
                return HttpAnswer(exc.code, exc.read())
            except (urllib.error.URLError, OSError) as exc:
                return HttpAnswer(0, str(exc).encode())  # 0: nothing answered
        return self.call(send, timeout + 5)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
