"""Node timelines: boot events, append-only, one key per event in time order
(keys.event(MAC, SEQ)); reading them back is `list_events`."""

from __future__ import annotations

import contextlib

from provisioner.errors import Conflict
from provisioner.inventory import codec, keys
from provisioner.inventory.versioned import CAS_RETRIES
from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.store.base import KeyValueStore, TxnOp


class EventLog:
    store: KeyValueStore

    @staticmethod
    def event_op(event: BootEvent, bump: int = 0) -> TxnOp:
        """The write that records `event` (create-only; `bump` moves it to the next key)."""
        key = keys.event(event.mac.value, keys.seq(event.at, bump))
        return TxnOp(key, codec.encode_event(event), expect=0)

    async def add_event(self, event: BootEvent) -> None:
        """Record `event`; events at the same instant get the next free key, never overwrite."""
        for bump in range(CAS_RETRIES):
            op = self.event_op(event, bump)
            assert op.value is not None
            with contextlib.suppress(Conflict):
                await self.store.put(op.key, op.value, expect=0)
                return
        raise Conflict(f"could not record event {event.kind} for {event.mac}")

    async def list_events(self, mac: MacAddress) -> list[BootEvent]:
        result = await self.store.range(keys.events(mac.value))
        return [codec.decode_event(kv.value) for kv in result.items]
