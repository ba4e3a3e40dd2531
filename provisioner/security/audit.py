"""The append-only audit log: who did what to which object, and whether it was allowed.

    keys.audit(SEQ)   {"seq", "who", "action", "target", "outcome", "at", "detail"}

`seq` is the entry's time as keys.seq spells it, so that keys sort in time order; entries
are created with `expect=0` (never overwritten) and this module has no delete. Every admin
change, every authentication failure and every one-boot token use is recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from provisioner.errors import Conflict, StoreError
from provisioner.inventory import keys
from provisioner.store.base import KeyValueStore, TxnOp

log = logging.getLogger(__name__)

_BUMPS: Final = 64


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

    async def entries(self, *, limit: int = 100, before: str | None = None,
                      action: str | None = None) -> list[AuditEntry]:
        """Newest first; `before` is a seq from an earlier page."""
        result = await self.store.range(keys.AUDIT)
        found: list[AuditEntry] = []
        for kv in reversed(result.items):
            data = json.loads(kv.value)
            if before is not None and data["seq"] >= before:
                continue
            if action is not None and data["action"] != action:
                continue
            found.append(AuditEntry(data["seq"], data["who"], data["action"], data["target"],
                                    data["outcome"], data["at"], data.get("detail", {})))
            if len(found) >= limit:
                break
        return found
