"""[retries]: the deadlines of a node's boot stages, and how often a stalled boot is retried.

Read by config.py like every other section; acted on by nodes/retries.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConfigError


@dataclass(frozen=True)
class RetrySettings:
    """A node power-cycled through its power driver whose boot then stops at a stage is
    power-cycled again, `max_retries` times, each time waiting `backoff` times longer, then
    failed with the stage named. Nodes with the manual driver are failed at once."""

    enabled: bool = True
    dhcp_deadline: float = 120.0  # seconds from a power cycle to the node's DHCP ACK
    script_deadline: float = 120.0  # seconds from the DHCP ACK to its boot script
    #: seconds from the boot script to the callback; keep it below callback_timeout, which
    #: fails the node without a retry
    callback_deadline: float = 300.0
    max_retries: int = 2
    backoff: float = 2.0  # each retry's deadlines are this many times the last one's
    interval: float = 5.0  # seconds between looks at the nodes being watched


def check_retries(retries: RetrySettings) -> None:
    deadlines = (retries.dhcp_deadline, retries.script_deadline, retries.callback_deadline)
    if min(deadlines) <= 0 or retries.interval <= 0:
        raise ConfigError("retries: deadlines and interval must be more than 0 seconds")
    if retries.max_retries < 0 or retries.backoff < 1:
        raise ConfigError("retries: max_retries must be 0 or more and backoff 1 or more")
