"""Helpers for handoff tests: confirmation recorder, a bounded wait."""

from __future__ import annotations

from provisioner.nodes.model import MacAddress
from provisioner.store.base import TxnOp


class Confirmations:
    def __init__(self) -> None:
        self.macs: list[MacAddress] = []

    async def __call__(self, mac: MacAddress, done: TxnOp) -> bool:
        self.macs.append(mac)
        return False  # the outbox deletes its entry itself

