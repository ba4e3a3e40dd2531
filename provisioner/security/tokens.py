"""One-boot tokens for the node plane and bearer tokens for the admin plane, both stored hashed.

    keys.boot_token(MAC)    {"sha256": HEX, "expires": EPOCH}   one per node
    keys.api_token(ID)      {"id", "name", "role", "sha256", "created"}

A one-boot token is issued when a node's overlay is built and redeemed once by its boot
callback: redeeming deletes the key with compare-and-swap, so of two concurrent callbacks with
the same token exactly one wins. Every refusal (wrong, expired, replayed, another node's, none
issued) raises the same Unauthorized with the same message, so a caller learns nothing about
which it was; the reason is returned separately for the audit log only.

An admin token reads "<id>.<secret>": the id finds the record, then the secret's sha256 is
compared in constant time. Only hashes are stored; a token is shown once, when it is created.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from provisioner.errors import Conflict, NotFound, Unauthorized, ValidationError
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress
from provisioner.store.base import KeyValueStore, TxnOp

log = logging.getLogger(__name__)

BOOT_TOKEN_REFUSED: Final = ("the boot token is not valid for this node (wrong, expired or "
                             "already used); reboot the node to get a new one")
API_TOKEN_REFUSED: Final = ("the bearer token is not valid; create one with `provisioner token "
                            "create --role viewer` and send `Authorization: Bearer TOKEN`")
_ID: Final = re.compile(r"[0-9a-f]{12}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _dump(data: dict[str, object]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class BootTokenRefused(Unauthorized):
    """The one-boot token was refused; `reason` is for the audit log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(BOOT_TOKEN_REFUSED)
        self.reason = reason


class BootTokens:
    """Issue and redeem one-boot tokens. Time is passed in (`now`) so tests control expiry."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def issue(self, mac: MacAddress, ttl: float, now: float, *, issuer: str = "",
                    replaceable: Callable[[str], bool] = lambda issuer: False) -> str:
        """A token for `mac`'s current boot. Issued once per boot: while one is outstanding
        (issued, not redeemed, not expired) a second call raises Conflict rather than replace
        it, so whoever fetched first cannot be pre-empted by a later fetch. The one exception:
        `replaceable(issuer of the outstanding one)` is true (with several heads: the head that
        issued it is dead, so nobody can hand the node its overlay again, and the node's boot
        fallback asks another head); then it is replaced, and that is logged."""
        token = secrets.token_urlsafe(32)
        record = _dump({"sha256": digest(token), "expires": now + ttl, "issuer": issuer})
        key = keys.boot_token(mac.value)
        kv = await self.store.get(key)
        if kv is not None and float(json.loads(kv.value).get("expires", 0)) > now:
            earlier = str(json.loads(kv.value).get("issuer", ""))
            if not replaceable(earlier):
                raise Conflict(f"a boot token was already issued for {mac} in this boot; the "
                               "node gets a new one when it boots again")
            log.warning("boot token for %s: the one head %s issued in this boot is replaced "
                        "by %s (%s is no longer a live head)", mac, earlier, issuer, earlier)
        await self.store.put(key, record, expect=kv.mod_revision if kv is not None else 0)
        return token

    async def new_boot(self, mac: MacAddress) -> None:
        """`mac` started a new boot: the previous boot's token, used or not, is void."""
        kv = await self.store.get(keys.boot_token(mac.value))
        if kv is not None:
            await self._discard(kv.key, kv.mod_revision)

    async def redeem(self, mac: MacAddress, token: str, now: float) -> None:
        """Accept `token` for `mac` once, or raise BootTokenRefused."""
        op = await self.check(mac, token, now)
        try:
            await self.store.delete(op.key, expect=op.expect)
        except (Conflict, NotFound):
            raise self.refused_concurrently() from None

    async def check(self, mac: MacAddress, token: str, now: float) -> TxnOp:
        """Check `token` for `mac` without using it up: the returned delete (a CAS on the
        token's revision) redeems it, and is meant to be committed in one txn with what the
        token allows. Of two txns carrying it, exactly one commits; the other gets a
        TxnConflict on `op.key` and must refuse like a replay (`refused_concurrently`)."""
        kv = await self.store.get(keys.boot_token(mac.value))
        if kv is None:
            raise BootTokenRefused("no token issued or already used")
        record = json.loads(kv.value)
        if not hmac.compare_digest(digest(token), str(record.get("sha256", ""))):
            raise BootTokenRefused("wrong token")
        if float(record.get("expires", 0)) <= now:
            await self._discard(kv.key, kv.mod_revision)
            raise BootTokenRefused("expired")
        return TxnOp(kv.key, None, expect=kv.mod_revision)

    async def unused(self, op: TxnOp) -> bool:
        """Whether the token `op` (from `check`) would redeem is still there, unredeemed."""
        kv = await self.store.get(op.key)
        return kv is not None and kv.mod_revision == op.expect

    @staticmethod
    def refused_concurrently() -> BootTokenRefused:
        return BootTokenRefused("replayed: redeemed concurrently")

    async def _discard(self, key: str, revision: int) -> None:
        with contextlib.suppress(Conflict, NotFound):
            await self.store.delete(key, expect=revision)


class Role(enum.IntEnum):
    """Ordered: a higher role can do everything a lower one can."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValidationError("role", f"{text!r} is not one of viewer, operator, "
                                  "admin") from None


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored admin token, without its secret."""

    id: str
    name: str
    role: Role
    created: float


class ApiTokens:
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def create(self, role: Role, name: str, now: float) -> tuple[ApiToken, str]:
        """A new token; the returned "<id>.<secret>" string is never stored or shown again."""
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ValidationError("name", f"{name!r}: use 1-64 letters, digits, _ . @ -")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        record = ApiToken(token_id, name, role, now)
        await self.store.put(keys.api_token(token_id), _dump(
            {"id": token_id, "name": name, "role": role.label, "sha256": digest(secret),
             "created": now}), expect=0)
        return record, f"{token_id}.{secret}"

    async def list(self) -> list[ApiToken]:
        result = await self.store.range(keys.API_TOKENS)
        return sorted((_token(json.loads(kv.value)) for kv in result.items),
                      key=lambda t: (t.created, t.id))

    async def revoke(self, token_id: str) -> ApiToken:
        kv = await self.store.get(keys.api_token(token_id)) if _ID.fullmatch(token_id) else None
        if kv is None:
            raise NotFound(f"no token {token_id!r}; see `provisioner token list`")
        await self.store.delete(kv.key, expect=kv.mod_revision)
        return _token(json.loads(kv.value))

    async def authenticate(self, presented: str) -> ApiToken:
        """The token a bearer string belongs to, or Unauthorized (same message every time)."""
        token_id, _, secret = presented.partition(".")
        kv = await self.store.get(keys.api_token(token_id)) if _ID.fullmatch(token_id) else None
        record = json.loads(kv.value) if kv is not None else {}
        # Compare even when the id is unknown, so timing does not tell ids apart.
        expected = str(record.get("sha256", "0" * 64))
        if not hmac.compare_digest(digest(secret), expected) or kv is None:
            raise Unauthorized(API_TOKEN_REFUSED)
        return _token(record)


def _token(data: dict[str, object]) -> ApiToken:
    created = data.get("created", 0.0)
    return ApiToken(str(data["id"]), str(data.get("name", "")), Role.parse(str(data["role"])),
                    float(created) if isinstance(created, int | float) else 0.0)
