"""Helpers for handoff tests: confirmation recorder, a bounded wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from provisioner.nodes.model import MacAddress
from provisioner.store.base import TxnOp


class Confirmations:
    def __init__(self) -> None:
        self.macs: list[MacAddress] = []

    async def __call__(self, mac: MacAddress, done: TxnOp) -> bool:
        self.macs.append(mac)
        return False  # the outbox deletes its entry itself


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)
