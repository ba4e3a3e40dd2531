"""`eventually`: wait for a condition the code under test makes true in the background."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

DEFAULT_TIMEOUT = 10.0


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str = "the condition",
                     timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01) -> None:
    """Poll `check` (plain or async) until it is true; fail the test naming `what` if it is
    not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(interval)
