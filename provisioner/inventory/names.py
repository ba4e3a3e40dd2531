"""Node names: unique across the inventory because each is claimed by compare-and-swap.

A claim (keys.name(NAME)) holds the MAC of the node that owns the name and when it was
claimed. It is written before the node and removed after the node is deleted or renamed, so a
crash in between leaves a claim without its node: one older than CLAIM_GRACE is taken over.
"""

from __future__ import annotations

import contextlib
import time
from typing import Final

from provisioner.errors import Conflict, NotFound, ValidationError
from provisioner.inventory import codec, keys
from provisioner.nodes.model import MacAddress, check_hostname
from provisioner.store.base import KeyValueStore

#: seconds before a name claim without its node counts as left over from a crash
CLAIM_GRACE: Final = 30.0


class NameClaims:
    """Claim, release and resolve node names over the store."""

    store: KeyValueStore

    async def resolve(self, ref: str) -> str:
        """The canonical MAC of the node `ref` names (a MAC in any accepted form, or a name)."""
        try:
            return MacAddress(ref).value
        except ValidationError:
            pass
        try:
            name = check_hostname(ref)
        except ValidationError:
            raise NotFound(f"{ref!r} is neither a MAC address nor a node name") from None
        kv = await self.store.get(keys.name(name))
        if kv is None:
            raise NotFound(f"no node named {ref!r}; see `provisioner node list`")
        return codec.decode_claim(kv.value)[0]

    async def claim_name(self, name: str, mac: MacAddress) -> None:
        """Names are unique: the name key is created by CAS. A claim left behind by a crash
        (its node absent or renamed, and older than CLAIM_GRACE) is taken over; a younger one
        may belong to an add still in flight, so it is refused like a live one."""
        key = keys.name(name)
        try:
            await self.store.put(key, codec.encode_claim(mac, time.time()), expect=0)
            return
        except Conflict:
            pass
        kv = await self.store.get(key)
        if kv is not None:
            owner_mac, claimed_at = codec.decode_claim(kv.value)
            if owner_mac != mac.value:
                owner = await self.store.get(keys.node(owner_mac))
                alive = owner is not None and codec.node_name(owner.value) == name
                if alive or time.time() - claimed_at < CLAIM_GRACE:
                    raise Conflict(f"the name {name!r} belongs to node {owner_mac}; "
                                   "choose another name")
        await self.store.put(key, codec.encode_claim(mac, time.time()),
                             expect=kv.mod_revision if kv is not None else 0)

    async def release_name(self, name: str, mac: MacAddress) -> None:
        """Remove the claim on `name` if `mac` holds it."""
        kv = await self.store.get(keys.name(name))
        if kv is not None and codec.decode_claim(kv.value)[0] == mac.value:
            with contextlib.suppress(Conflict, NotFound):
                await self.store.delete(kv.key, expect=kv.mod_revision)
