"""When to send a window again and when to give up: the retransmit policy of one transfer.

Pure arithmetic, no clock: the session adds `rto` to the `now` it is given to get its deadline.

- The base timeout is the one the client negotiated (RFC 2349), else the server's.
- Each retransmit of the same window doubles the timeout (exponential backoff, RFC 1123
  section 4.2.3.1 asks for an adaptive one), up to `cap`; the cap is never below the base, so
  a negotiated 30 s timeout is honoured even when the server's cap is 8 s.
- After `max_retries` retransmits of one window without progress the transfer fails.
- Any ACK that moves the window forward starts again from the base (the session resets).
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.tftp.negotiation import Negotiated, SessionConfig

__all__ = ["RetransmitPolicy"]


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    base: float  # seconds to wait for an ACK before the first retransmit
    cap: float  # the backoff never waits longer than this
    max_retries: int  # retransmits of one window before the transfer fails

    @classmethod
    def for_transfer(cls, negotiated: Negotiated, config: SessionConfig) -> RetransmitPolicy:
        base = negotiated.timeout or config.timeout
        return cls(base, max(base, config.max_timeout), config.max_retries)

    def rto(self, retries: int) -> float:
        """The timeout to wait after the `retries`-th retransmit of a window (0: none yet)."""
        return min(self.base * 2.0**retries, self.cap)

    def exhausted(self, retries: int) -> bool:
        return retries >= self.max_retries
