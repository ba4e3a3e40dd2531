"""Which new boot-plane connection may stay open, sans-IO: a cap per source address and a global
cap with a reserve for the addresses of the appliance's own nodes.

Measured before these caps: one machine holding 2,048 idle connections (reopening each one the
server closed) left no slot for any node, and a power-cycled node took 54 s to be ready
instead of 29 s. Now:

- an address may hold at most `max_per_source` connections;
- all together at most `max_connections`, of which the last `reserved` are only for an address
  that holds a lease, a static address or a ProxyDHCP sighting (`holds_lease`, asked only when
  the reserve is reached, so the common case costs no lookup): strangers, from however many
  addresses, cannot take the slots a booting node needs;
- a connection over a cap is closed at once (nothing queues), counted by reason, and logged at
  most once per source address per LOG_EVERY, like boot/binding.py's refusals.

Pure: the caller passes the time and closes the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from provisioner.limits import OncePer

LOG_EVERY: Final = 60.0  # seconds between two log lines about the same source
MAX_LOGGED: Final = 4096  # sources remembered for log rate-limiting; the oldest are forgotten

#: refusal reasons, as counted (`refused:<reason>`)
PER_SOURCE: Final = "per_source"
FULL: Final = "full"
RESERVED: Final = "reserved"


@dataclass
class ConnectionAdmission:
    """Counts open connections by source; `admit` before serving one, `release` after."""

    max_connections: int
    reserved: int
    max_per_source: int
    open: int = 0
    _by_source: dict[str, int] = field(default_factory=dict)
    _log: OncePer = field(default_factory=lambda: OncePer(LOG_EVERY, limit=MAX_LOGGED))

    def admit(self, source: str, holds_lease: Callable[[str], bool]) -> str | None:
        """None when `source` may open one more connection (it is then counted until
        `release`), else the refusal reason."""
        held = self._by_source.get(source, 0)
        if held >= self.max_per_source:
            return PER_SOURCE
        if self.open >= self.max_connections:
            return FULL
        if self.open >= self.max_connections - self.reserved and not holds_lease(source):
            return RESERVED
        self.open += 1
        self._by_source[source] = held + 1
        return None

    def release(self, source: str) -> None:
        held = self._by_source.get(source, 0)
        if held <= 1:
            self._by_source.pop(source, None)
        else:
            self._by_source[source] = held - 1
        self.open = max(self.open - 1, 0)

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def log_due(self, source: str, now: float) -> bool:
        """Whether a refusal of `source` is worth a log line now (once per LOG_EVERY)."""
        return self._log.due(source, now)
