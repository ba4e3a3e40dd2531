"""ConnectionAdmission (boot/admission.py): the caps per source and in all, the reserve for our
nodes' addresses, and the once-a-minute log of a refused source, on a hand-moved clock."""

from __future__ import annotations

from provisioner.boot.admission import FULL, LOG_EVERY, PER_SOURCE, RESERVED, ConnectionAdmission

LEASED = {"10.0.0.5"}


def leased(source: str) -> bool:
    return source in LEASED


def stranger(source: str) -> bool:
    raise AssertionError("the lease table is asked only once the reserve is reached")


def test_one_source_is_capped_and_gets_its_slots_back() -> None:
    admission = ConnectionAdmission(max_connections=100, reserved=10, max_per_source=3)
    assert [admission.admit("10.0.0.9", stranger) for _ in range(3)] == [None, None, None]
    assert admission.admit("10.0.0.9", stranger) == PER_SOURCE
    assert admission.admit("10.0.0.8", stranger) is None  # another source is not affected
    admission.release("10.0.0.9")
    assert admission.held_by("10.0.0.9") == 2
    assert admission.admit("10.0.0.9", stranger) is None
    assert admission.open == 4


def test_the_per_source_cap_holds_for_leased_addresses_too() -> None:
    # A compute node holds a lease and runs users' jobs: a lease is no licence to flood.
    admission = ConnectionAdmission(max_connections=100, reserved=10, max_per_source=2)
    assert admission.admit("10.0.0.5", leased) is None
    assert admission.admit("10.0.0.5", leased) is None
    assert admission.admit("10.0.0.5", leased) == PER_SOURCE


def test_strangers_stop_below_the_reserve_and_a_leased_address_uses_it() -> None:
    admission = ConnectionAdmission(max_connections=10, reserved=3, max_per_source=1)
    strangers = [f"192.0.2.{i}" for i in range(20)]
    admitted = [s for s in strangers if admission.admit(s, leased) is None]
    assert len(admitted) == 7  # 10 - 3: the reserve stays free whatever number of addresses
    assert admission.admit("192.0.2.99", leased) == RESERVED
    assert admission.admit("10.0.0.5", leased) is None  # a node's address gets a reserved slot
    LEASED.update({"10.0.0.6", "10.0.0.7"})
    try:
        assert admission.admit("10.0.0.6", leased) is None
        assert admission.admit("10.0.0.7", leased) is None
        assert admission.admit("10.0.0.8", leased) == FULL  # nothing at all is left
        admission.release(admitted[0])
        assert admission.admit("192.0.2.99", leased) == RESERVED  # still in the reserve
    finally:
        LEASED.difference_update({"10.0.0.6", "10.0.0.7"})


def test_release_of_every_slot_forgets_the_source() -> None:
    admission = ConnectionAdmission(max_connections=4, reserved=0, max_per_source=4)
    for _ in range(4):
        assert admission.admit("a", stranger) is None
    for _ in range(4):
        admission.release("a")
    assert admission.open == 0 and admission.held_by("a") == 0
    admission.release("a")  # a stray release never goes negative
    assert admission.open == 0


def test_a_refused_source_is_logged_once_a_minute() -> None:
    admission = ConnectionAdmission(max_connections=4, reserved=0, max_per_source=1)
    now = 1000.0
    assert admission.log_due("a", now)
    assert not admission.log_due("a", now + 1)
    assert admission.log_due("b", now + 1)  # another source has its own minute
    assert not admission.log_due("a", now + LOG_EVERY - 0.5)
    assert admission.log_due("a", now + LOG_EVERY)
