"""Finished TFTP transfers become events on their node; a store that is away loses the event
(logged with the client's address), never the appliance's task."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest

from provisioner.errors import StoreUnavailable
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Lease
from provisioner.service import _TransferRecorder
from provisioner.store.memory import MemoryStore
from provisioner.tftp.server import TransferRecord
from provisioner.tftp.transitions import TransferCompleted

CLIENT = ("10.0.0.9", 2000)


async def settle(recorder: _TransferRecorder) -> None:
    while recorder._tasks:
        await asyncio.gather(*recorder._tasks)


async def test_a_store_that_is_away_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = Inventory(MemoryStore())

    async def away(ip: ipaddress.IPv4Address) -> Lease | None:
        raise StoreUnavailable("store 127.0.0.1:2379 did not answer")

    monkeypatch.setattr(inventory, "get_lease", away)
    recorder = _TransferRecorder(inventory)
    with caplog.at_level(logging.WARNING, logger="provisioner"):
        recorder(TransferRecord(CLIENT, "ipxe.efi", TransferCompleted(1000, 0.1, 0)))
        await settle(recorder)
    assert "could not record a TFTP transfer to 10.0.0.9" in caplog.text
    assert "did not answer" in caplog.text
