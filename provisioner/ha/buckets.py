"""The split of DHCP clients over the live heads: RFC 3074 load balancing, sans I/O.

RFC 3074 section 6 hashes a client into one of 256 buckets with a Pearson hash; each server
answers the clients of the buckets assigned to it (section 5) and ignores the others. The
hash here is the RFC's `loadb_p_hash` over the client's hardware address (chaddr). Section 5
prefers the client identifier (option 61) when present; we do not use it because a node's PXE
ROM, its iPXE and its booted OS send different ones (or none), and a node must stay with one
head for its whole boot (its leases are keyed by MAC for the same reason, dhcp/leases.py).

Buckets are assigned to heads by rendezvous hashing (highest random weight): bucket b goes to
the head with the highest blake2b(head, b). Every head computes the same table from the same
live set, and a change of the set moves only the buckets of the head that left (or that the
newcomer wins): clients of the surviving heads keep their head.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Final

BUCKETS: Final = 256

#: RFC 3074 section 6, `loadb_mx_tbl`: a permutation of 0..255
_MIX: Final = bytes((
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0,
    232, 31, 32, 55, 60, 152, 58, 17, 237, 174, 70, 160, 144, 220, 90, 57,
    223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243, 124, 95, 222, 179,
    197, 65, 180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23,
    97, 16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108,
    244, 67, 207, 9, 178, 204, 74, 98, 126, 249, 167, 116, 34, 77, 193,
    200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25, 226, 227, 199, 75,
    27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115,
    241, 73, 88, 105, 39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221,
    148, 154, 122, 12, 84, 82, 163, 44, 139, 228, 236, 205, 242, 217, 11,
    187, 146, 159, 64, 86, 239, 195, 42, 106, 198, 118, 112, 184, 172, 87,
    2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164, 102, 147, 45, 66,
    231, 52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189,
    93, 92, 51, 53, 183, 19, 171, 72, 50, 33, 104, 101, 69, 8, 252, 83, 120,
    76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136, 208, 162, 129, 190,
    132, 156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153,
    149, 80, 170, 68, 6, 169, 234, 151,
))


def pearson(key: bytes) -> int:
    """RFC 3074 section 6 `loadb_p_hash`: the hash starts at the key's length and takes the
    key's bytes from the last to the first."""
    value = len(key) & 0xFF
    for byte in reversed(key):
        value = _MIX[value ^ byte]
    return value


def bucket_of(chaddr: bytes) -> int:
    """The bucket of a client by its hardware address (chaddr, hlen bytes)."""
    return pearson(chaddr)


def _weight(head: str, bucket: int) -> bytes:
    return hashlib.blake2b(f"{bucket}/{head}".encode(), digest_size=8).digest()


def assign(heads: Iterable[str]) -> tuple[str, ...]:
    """The owner of each of the 256 buckets among `heads`; empty when there is no head. The
    result depends on the set alone, not on its order (rendezvous hashing, ties by name)."""
    live = sorted(set(heads))
    if not live:
        return ()
    return tuple(max(live, key=lambda head: (_weight(head, b), head)) for b in range(BUCKETS))


def shares(table: tuple[str, ...]) -> dict[str, int]:
    """How many buckets each head owns in `table`."""
    return dict(Counter(table))
