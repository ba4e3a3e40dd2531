"""The append-only audit log: who did what to which object, and whether it was allowed.

    keys.audit(SEQ)   {"seq", "who", "action", "target", "outcome", "at", "detail"}

`seq` is the entry's time as keys.seq spells it, so that keys sort in time order; entries
are created with `expect=0` (never overwritten). Only retention deletes them: `stale_entries`
names the entries past `[retention]` audit_records and audit_days (runtime/retention.py). Every
admin change and every one-boot token use is recorded; a flood of refused requests is counted
and recorded as one summary per source and interval, not one entry each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from provisioner.errors import Conflict, StoreError
from provisioner.inventory import keys
from provisioner.store.base import KeyValueStore, TxnOp

log = logging.getLogger(__name__)

_BUMPS: Final = 64
PAGE: Final = 500  # keys read per request while looking for stale entries


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: str
    who: str  # "token:NAME(ID)", "node:MAC", "local:USER", "anonymous"
    action: str  # "node.create", "auth", "boot_token.redeem", ...
    target: str
    outcome: str  # "ok", "denied", "failed"
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "who": self.who, "action": self.action, "target": self.target,
                "outcome": self.outcome, "at": self.at, "detail": dict(self.detail)}


def _encode(entry: AuditEntry) -> bytes:
    return json.dumps(entry.to_dict(), separators=(",", ":"), default=str).encode()


class AuditLog:
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    @staticmethod
    def op(who: str, action: str, target: str, outcome: str, at: float, *,
           detail: Mapping[str, Any] | None = None, bump: int = 0) -> TxnOp:
        """The create-only write of one entry, to commit in a txn with the change it records
        (`bump` picks the next sequence number when a retry finds this one taken)."""
        entry = AuditEntry(keys.seq(at, bump), who, action, target, outcome, at,
                           dict(detail or {}))
        return TxnOp(keys.audit(entry.seq), _encode(entry), expect=0)

    async def record(self, who: str, action: str, target: str, outcome: str, at: float, *,
                     detail: Mapping[str, Any] | None = None) -> AuditEntry | None:
        """Append one entry. A store failure is logged, not raised: the audit log must not
        turn a refused request into a 500, nor undo a change that already happened."""
        for bump in range(_BUMPS):
            entry = AuditEntry(keys.seq(at, bump), who, action, target, outcome, at,
                               dict(detail or {}))
            try:
                await self.store.put(keys.audit(entry.seq), _encode(entry), expect=0)
                return entry
            except Conflict:
                continue
            except StoreError as exc:
                log.error("audit: could not record %s %s %s: %s", who, action, target, exc)
                return None
        log.error("audit: no free sequence number for %s %s", action, target)
        return None

    async def entries(self, *, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries (of `action`), newest first."""
        return (await self.page(limit=limit, action=action))[0]

    async def page(self, *, limit: int = 100, after: str = "",
                   action: str | None = None) -> tuple[list[AuditEntry], str]:
        """Up to `limit` entries, newest first, older than the sequence `after` (the cursor the
        previous page returned); the entries and the next cursor ("" once there is no more)."""
        found: list[AuditEntry] = []
        after = keys.audit(after) if after else ""
        # One more than asked, so a page that reaches the end says so (no cursor). A filter may
        # skip most entries: read bigger pages then; the cursor is still the last entry looked
        # at, so nothing is skipped or repeated (and a last empty page may follow a full one).
        size = max(limit, PAGE) if action is not None else limit + 1
        while True:
            page = await self.store.page(keys.AUDIT, after=after, limit=size, reverse=True)
            for index, kv in enumerate(page.items):
                data = json.loads(kv.value)
                if action is None or data["action"] == action:
                    found.append(_entry(data))
                if len(found) >= limit:
                    more = index + 1 < len(page.items) or len(page.items) == size
                    return found, keys.seq_of(kv.key) if more else ""
                after = kv.key
            if len(page.items) < size:
                return found, ""


def _entry(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(data["seq"], data["who"], data["action"], data["target"],
                      data["outcome"], data["at"], data.get("detail", {}))


async def stale_entries(store: KeyValueStore, *, keep: int,
                        before: float) -> AsyncIterator[str]:
    """The keys of entries past retention: all but the newest `keep`, and any older than
    `before` (seconds). Read newest first, a page at a time."""
    seen, after = 0, ""
    while True:
        page = await store.page(keys.AUDIT, after=after, limit=PAGE, reverse=True)
        for kv in page.items:
            seen += 1
            at = keys.seq_time(kv.key)
            if seen > keep or (at is not None and at < before):
                yield kv.key
        if len(page.items) < PAGE:
            return
        after = page.items[-1].key
