"""The retransmit policy on its own: backoff, its cap, the retry limit, whose timeout is the base.

The session's use of it (deadlines from `now`, resets on progress) is in test_session_recovery.py.
"""

from __future__ import annotations

import itertools

import pytest

from provisioner.tftp.negotiation import Negotiated, SessionConfig
from provisioner.tftp.retransmit import RetransmitPolicy


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetransmitPolicy(base=0.5, cap=3.0, max_retries=6)
    waits = [policy.rto(retries) for retries in range(6)]
    assert waits[0] == policy.base
    for before, after in itertools.pairwise(waits):
        assert after == min(2 * before, policy.cap)
    assert waits[-1] == policy.cap


@pytest.mark.parametrize("max_retries", [0, 1, 5])
def test_exhausted_after_max_retries(max_retries: int) -> None:
    policy = RetransmitPolicy(base=1.0, cap=8.0, max_retries=max_retries)
    allowed = [r for r in range(max_retries + 3) if not policy.exhausted(r)]
    assert allowed == list(range(max_retries))


def test_the_servers_timeout_is_the_base_without_a_negotiated_one() -> None:
    config = SessionConfig(timeout=2.0, max_timeout=5.0, max_retries=3)
    policy = RetransmitPolicy.for_transfer(Negotiated(), config)
    assert (policy.base, policy.cap, policy.max_retries) == (2.0, 5.0, 3)


def test_a_negotiated_timeout_is_the_base_even_above_the_cap() -> None:
    # RFC 2349: the client's timeout is echoed and honoured; the cap only bounds the backoff.
    config = SessionConfig(timeout=1.0, max_timeout=8.0)
    policy = RetransmitPolicy.for_transfer(Negotiated(timeout=30.0), config)
    assert policy.base == 30.0
    assert policy.rto(0) == policy.rto(3) == 30.0
