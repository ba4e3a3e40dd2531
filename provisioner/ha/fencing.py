"""Fencing: when a head must stop acting as a member of the live set, sans I/O.

A head is in the live set for as long as its store lease lives: at least `ttl` seconds after
the store received the head's last successful renewal. Once that lease may have expired the
other heads take over its DHCP clients, so the head must have stopped first: it counts from
the moment it *sent* its last renewal that succeeded (the store received it later) and fences
itself after `fence_after` (less than `ttl`) without another success. A renewal that fails
fences it at once: the store is unreachable or the lease is gone, and it cannot know which.
It is fenced too until it has joined for the first time.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the share of the ttl after the last good renewal at which a head fences itself: late
#: enough that one slow renewal (they run every ttl/3) does not fence it, early enough that
#: it has stopped before the store can expire its lease and another head answers for it
FENCE_SHARE = 2 / 3


@dataclass
class Session:
    """The state of a head's store session, fed with monotonic times by ha/membership.py."""

    ttl: float
    renewed_at: float | None = None
    failure: str = "not joined yet"

    @property
    def fence_after(self) -> float:
        return self.ttl * FENCE_SHARE

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` (or the join) succeeded."""
        self.renewed_at = sent_at if self.renewed_at is None else max(self.renewed_at, sent_at)
        self.failure = ""

    def failed(self, reason: str) -> None:
        """A renewal (or a join) failed: fenced until the next success."""
        self.failure = reason

    def fenced(self, now: float) -> str | None:
        """Why the head is fenced at `now`; None while it is a live member."""
        if self.failure:
            return self.failure
        if self.renewed_at is None:
            return "not joined yet"
        late = now - self.renewed_at
        if late > self.fence_after:
            return (f"no store lease renewal for {late:.1f} s (fenced after "
                    f"{self.fence_after:.1f} s of a {self.ttl:g} s ttl)")
        return None
