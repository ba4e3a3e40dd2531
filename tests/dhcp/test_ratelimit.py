"""MacRateLimit (dhcp/ratelimit.py) on a hand-moved clock: real clients' retry schedules are
never limited with the defaults (limits.py says why), a flooding MAC is, and the table stays
bounded."""

from __future__ import annotations

import itertools

from provisioner.dhcp.ratelimit import MacRateLimit
from provisioner.limits import DhcpLimits

MAC = bytes.fromhex("525400123456") + bytes(10)


def default_limit() -> MacRateLimit:
    d = DhcpLimits()
    return MacRateLimit(d.mac_burst, d.mac_rate, d.mac_table)


def sent_at(limit: MacRateLimit, times: list[float], chaddr: bytes = MAC) -> list[bool]:
    return [limit.allow(chaddr, t) for t in times]


def test_rfc2131_and_pxe_retries_are_never_limited() -> None:
    # RFC 2131 section 4.1: ~4 s, then doubled (8, 16, 32, 64); a PXE ROM the same from 4 s.
    limit = default_limit()
    times = list(itertools.accumulate([0.0, 4, 8, 16, 32, 64]))
    assert all(sent_at(limit, times))


def test_a_whole_boot_with_fast_ipxe_retries_and_two_relays_is_never_limited() -> None:
    # ROM: DISCOVER, REQUEST, port 4011; iPXE: DISCOVER retried from 1 s doubling to 10 s,
    # REQUEST, ProxyDHCP request; the OS: DISCOVER, REQUEST; each seen twice (two relays),
    # then the same boot again right away (a power cycle), then renewals.
    limit = default_limit()
    rom = [0.0, 0.5, 1.0]
    ipxe = [3.0 + t for t in (0, 1, 3, 7, 8, 9)]
    os_client = [25.0, 25.2]
    boot = [t for t in rom + ipxe + os_client for _ in range(2)]
    again = [t + 30.0 for t in boot]
    renewals = [90.0 + 1800.0 * i for i in range(5)]
    assert all(sent_at(limit, boot + again + renewals))


def test_a_flooding_mac_is_limited_to_its_rate() -> None:
    limit = MacRateLimit(burst=20, rate=1.0, limit=16)
    flood = [i * 0.001 for i in range(1000)]  # 1000 packets in one second
    allowed = sent_at(limit, flood)
    assert allowed[:20] == [True] * 20
    assert sum(allowed) == 20  # one more token is refilled only after the whole second
    later = sent_at(limit, [5.0] * 100)
    assert sum(allowed + later) == 20 + 5  # the burst, then 1 a second over the 5 seconds
    other = bytes.fromhex("525400abcdef") + bytes(10)
    assert limit.allow(other, 5.1)  # another MAC is not affected


def test_the_table_is_bounded_and_forgetting_fails_open() -> None:
    limit = MacRateLimit(burst=1, rate=0.001, limit=8)
    assert limit.allow(MAC, 0.0)
    assert not limit.allow(MAC, 0.1)
    for i in range(20):
        limit.allow(i.to_bytes(16, "big"), 0.2)
    assert len(limit) == 8
    assert limit.allow(MAC, 0.3)  # forgotten: starts again with a full bucket


def test_a_clock_going_backwards_refills_nothing() -> None:
    limit = MacRateLimit(burst=1, rate=1.0, limit=8)
    assert limit.allow(MAC, 100.0)
    assert not limit.allow(MAC, 50.0)
    assert not limit.allow(MAC, 50.5)
