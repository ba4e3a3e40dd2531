"""One-boot tokens and admin API tokens over every store backend: single use, expiry, other
nodes' tokens, concurrent redeems, only hashes stored, roles ordered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from provisioner.errors import Conflict, NotFound, Unauthorized, ValidationError
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress
from provisioner.security.tokens import (
    BOOT_TOKEN_REFUSED,
    ApiTokens,
    BootTokenRefused,
    BootTokens,
    Role,
)
from provisioner.store.base import KeyValueStore

A = MacAddress("52:54:00:00:00:01")
B = MacAddress("52:54:00:00:00:02")
NOW = 1_700_000_000.0


async def _refused(tokens: BootTokens, mac: MacAddress, token: str, now: float) -> str:
    with pytest.raises(BootTokenRefused) as refused:
        await tokens.redeem(mac, token, now)
    assert str(refused.value) == BOOT_TOKEN_REFUSED  # the same message, whatever the reason
    return refused.value.reason


async def test_a_boot_token_is_redeemed_once(store: KeyValueStore) -> None:
    tokens = BootTokens(store)
    token = await tokens.issue(A, 60, NOW)
    assert len(token) >= 43
    await tokens.redeem(A, token, NOW + 1)
    assert "no token" in await _refused(tokens, A, token, NOW + 2)


async def test_wrong_expired_and_other_nodes_tokens_are_refused_alike(
        store: KeyValueStore) -> None:
    tokens = BootTokens(store)
    a_token = await tokens.issue(A, 60, NOW)
    b_token = await tokens.issue(B, 60, NOW)
    assert await _refused(tokens, A, b_token, NOW) == "wrong token"
    assert await _refused(tokens, A, "x" * 43, NOW) == "wrong token"
    assert await _refused(tokens, B, a_token, NOW) == "wrong token"
    assert await _refused(tokens, A, a_token, NOW + 60) == "expired"
    assert "no token" in await _refused(tokens, A, a_token, NOW)  # an expired one is gone
    await tokens.redeem(B, b_token, NOW + 59)


async def test_a_token_is_issued_once_per_boot_and_only_its_hash_is_stored(
        store: KeyValueStore) -> None:
    tokens = BootTokens(store)
    old = await tokens.issue(A, 60, NOW)
    with pytest.raises(Conflict, match="already issued"):
        await tokens.issue(A, 60, NOW + 1)  # a second fetch in the same boot replaces nothing
    await tokens.new_boot(A)
    new = await tokens.issue(A, 60, NOW + 2)
    kv = await store.get(keys.boot_token(A.value))
    assert kv is not None and new.encode() not in kv.value and old.encode() not in kv.value
    assert await _refused(tokens, A, old, NOW + 2) == "wrong token"
    await tokens.redeem(A, new, NOW + 2)
    assert isinstance(await tokens.issue(A, 60, NOW + 3), str)  # redeemed: the next boot's


async def test_an_expired_token_does_not_block_the_next_one(store: KeyValueStore) -> None:
    tokens = BootTokens(store)
    await tokens.issue(A, 60, NOW)
    fresh = await tokens.issue(A, 60, NOW + 61)
    await tokens.redeem(A, fresh, NOW + 62)


async def test_of_concurrent_redeems_of_one_token_exactly_one_wins(store: KeyValueStore) -> None:
    tokens = BootTokens(store)
    token = await tokens.issue(A, 60, NOW)
    results = await asyncio.gather(*(tokens.redeem(A, token, NOW) for _ in range(8)),
                                   return_exceptions=True)
    assert sum(1 for r in results if r is None) == 1
    assert all(isinstance(r, BootTokenRefused) for r in results if r is not None)


async def test_api_tokens_authenticate_by_id_and_secret_and_can_be_revoked(
        store: KeyValueStore) -> None:
    tokens = ApiTokens(store)
    record, secret = await tokens.create(Role.OPERATOR, "ci", NOW)
    token_id, _, raw = secret.partition(".")
    assert token_id == record.id
    kv = await store.get(keys.api_token(record.id))
    assert kv is not None and raw.encode() not in kv.value
    found = await tokens.authenticate(secret)
    assert found.role is Role.OPERATOR and found.name == "ci"
    for bad in (f"{record.id}.wrong", "nodot", "", f"{'0' * 12}.{raw}", f"../../x.{raw}"):
        with pytest.raises(Unauthorized):
            await tokens.authenticate(bad)
    assert [t.id for t in await tokens.list()] == [record.id]
    await tokens.revoke(record.id)
    with pytest.raises(Unauthorized):
        await tokens.authenticate(secret)
    with pytest.raises(NotFound):
        await tokens.revoke(record.id)


def test_roles_are_ordered_and_parsed() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Admin") is Role.ADMIN
    with pytest.raises(ValidationError, match="viewer, operator, admin"):
        Role.parse("root")


async def test_token_names_are_checked(store: KeyValueStore) -> None:
    with pytest.raises(ValidationError):
        await ApiTokens(store).create(Role.VIEWER, "bad name\n", NOW)


async def test_a_token_a_dead_head_issued_is_replaced_by_another_head_only(
        store: KeyValueStore) -> None:
    """Several heads: while the head that issued a boot's token lives, nobody replaces it
    (not even that head again); once it is dead another head may, and the old token is void."""
    tokens = BootTokens(store)
    alive = {"head1", "head2"}

    def dead_other(me: str) -> Callable[[str], bool]:
        return lambda issuer: bool(issuer) and issuer != me and issuer not in alive

    first = await tokens.issue(A, 60, NOW, issuer="head1", replaceable=dead_other("head1"))
    for me in ("head1", "head2"):
        with pytest.raises(Conflict, match="already issued"):
            await tokens.issue(A, 60, NOW + 1, issuer=me, replaceable=dead_other(me))
    alive.discard("head1")  # head1 died mid-boot
    second = await tokens.issue(A, 60, NOW + 2, issuer="head2",
                                replaceable=dead_other("head2"))
    assert await _refused(tokens, A, first, NOW + 2) == "wrong token"
    await tokens.redeem(A, second, NOW + 2)
