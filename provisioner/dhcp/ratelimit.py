"""A token bucket per client hardware address (chaddr), so one MAC cannot make the server decide,
hold offers, write leases or record discovered nodes as fast as it can send.

Every BOOTREQUEST takes a token from its chaddr's bucket; a bucket holds `burst` tokens and
refills at `rate` per second. A request finding its bucket empty is dropped before the policy
sees it, and counted (`rate_limited`). The defaults, and why a real client never meets them,
are in limits.py (DhcpLimits).

The table is bounded: past `limit` addresses the least recently seen is forgotten. Forgetting
fails open (that MAC starts again with a full bucket), never shut: a flood of made-up MACs makes
each of them cost one packet's worth, and cannot lock a real node out. Pure: the time is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class MacRateLimit:
    burst: int
    rate: float  # tokens per second
    limit: int  # addresses remembered at most
    #: chaddr -> (tokens left, when they were counted); least recently seen first
    _buckets: OrderedDict[bytes, tuple[float, float]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, chaddr: bytes, now: float) -> bool:
        """Take a token for `chaddr`; False when it has none left (drop the packet)."""
        tokens, then = self._buckets.pop(chaddr, (float(self.burst), now))
        # A clock that went backwards refills nothing (max(..., 0)), never a negative amount.
        tokens = min(float(self.burst), tokens + max(now - then, 0.0) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[chaddr] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.limit:
            self._buckets.popitem(last=False)
        return allowed
