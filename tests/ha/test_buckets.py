"""The split of DHCP clients over heads (ha/buckets.py): RFC 3074's hash, and a bucket table
every head computes the same, that moves only the buckets of a head that leaves."""

from __future__ import annotations

import random

from provisioner.ha.buckets import _MIX, BUCKETS, assign, bucket_of, pearson, shares


def test_the_mixing_table_is_a_permutation_of_the_bytes() -> None:
    assert sorted(_MIX) == list(range(256))


def test_the_hash_is_rfc_3074_loadb_p_hash() -> None:
    # Computed by hand from RFC 3074 section 6: the hash starts at the length, bytes last first.
    assert pearson(b"") == 0
    assert pearson(b"\x00") == _MIX[1 ^ 0]
    assert pearson(b"\x01\x02") == _MIX[_MIX[2 ^ 2] ^ 1]


def test_macs_spread_over_all_buckets() -> None:
    rng = random.Random(7)
    counts = [0] * BUCKETS
    for _ in range(256 * 64):
        counts[bucket_of(rng.randbytes(6))] += 1
    assert min(counts) > 20 and max(counts) < 120  # 64 expected in each


def test_the_table_depends_on_the_set_alone() -> None:
    assert assign(["b", "a", "c"]) == assign(["c", "a", "b", "a"])
    assert assign([]) == ()
    assert set(assign(["solo"])) == {"solo"}


def test_two_heads_share_the_buckets_fairly() -> None:
    counts = shares(assign(["head-1", "head-2"]))
    assert sum(counts.values()) == BUCKETS
    assert min(counts.values()) > BUCKETS // 4, counts


def test_a_head_that_leaves_moves_only_its_own_buckets() -> None:
    before = assign(["h1", "h2", "h3"])
    after = assign(["h1", "h3"])
    for owner_before, owner_after in zip(before, after, strict=True):
        if owner_before != "h2":
            assert owner_after == owner_before
        else:
            assert owner_after in ("h1", "h3")
    # and it takes back the same buckets when it returns
    assert assign(["h3", "h2", "h1"]) == before
