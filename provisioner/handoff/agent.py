"""The node agent's credential: made by the boot callback, checked by the builtin scheduler.

Every boot callback makes a fresh random token (256 bits) and answers it to the node, once; the
appliance keeps nothing of it but its SHA-256, which travels with the handoff to the scheduler
and sits in the scheduler's record of the node. The agent sends the token with every poll and
done (`Authorization: Bearer TOKEN`, RFC 6750 section 2.1); the scheduler hashes what it is
given and compares. A new boot hands over a new hash, so the token of the previous boot stops
working as soon as the scheduler confirms the registration. A plain hash suffices (no salt, no
slow KDF): the token is random, not a password, and 256 bits cannot be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

#: what a stored hash looks like (sha256, hex); "" is a node that has no credential
HASH_PATTERN: Final = re.compile(r"[0-9a-f]{64}")


def new_agent_token() -> str:
    """32 random bytes, URL-safe base64: safe in a header and in a busybox shell."""
    return secrets.token_urlsafe(32)


def agent_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def agent_matches(stored_hash: str, token: str) -> bool:
    """Whether `token` is the credential whose hash is stored, in constant time. A node with no
    stored hash (registered by hand, or before its first callback) matches nothing."""
    if not stored_hash or not token:
        return False
    return hmac.compare_digest(agent_hash(token), stored_hash)
