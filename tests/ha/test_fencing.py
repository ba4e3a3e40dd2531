"""When a head fences itself (ha/fencing.py): at once on a failed renewal, and before the store
can expire its lease when renewals hang."""

from __future__ import annotations

from provisioner.ha.fencing import FENCE_SHARE, Session


def test_fenced_until_joined() -> None:
    assert Session(3.0).fenced(100.0) == "not joined yet"


def test_a_member_is_fenced_before_its_lease_can_expire() -> None:
    session = Session(3.0)
    session.renewed(100.0)
    assert session.fenced(101.9) is None
    reason = session.fenced(100.0 + 3.0 * FENCE_SHARE + 0.01)
    assert reason is not None and "no store lease renewal" in reason
    assert 3.0 * FENCE_SHARE < 3.0  # the store cannot have expired the lease yet


def test_a_failed_renewal_fences_at_once_and_a_good_one_ends_it() -> None:
    session = Session(3.0)
    session.renewed(100.0)
    session.failed("the store is unreachable")
    assert session.fenced(100.1) == "the store is unreachable"
    session.renewed(101.0)
    assert session.fenced(101.1) is None


def test_an_older_renewal_answering_late_does_not_move_the_clock_back() -> None:
    session = Session(3.0)
    session.renewed(105.0)
    session.renewed(104.0)
    assert session.renewed_at == 105.0
