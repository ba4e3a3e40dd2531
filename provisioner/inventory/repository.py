"""Typed access to the inventory over any KeyValueStore: nodes and groups here, and, through
the classes Inventory is made of, the watch-fed view (cache.py), name claims (names.py),
leases (leases.py) and timelines (events.py).

Keys come from keys.py and bytes from codec.py. Lookups by MAC, name or IP read the view and
never wait on the network; every write goes to the store with compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from provisioner.errors import Conflict, NotFound, ProvisionerError, StoreError, ValidationError
from provisioner.inventory import codec, keys
from provisioner.inventory.cache import NodeCache, image_matches
from provisioner.inventory.events import EventLog
from provisioner.inventory.leases import LeaseRecords
from provisioner.inventory.names import NameClaims
from provisioner.inventory.versioned import CAS_RETRIES, Versioned
from provisioner.nodes.model import (
    Effective,
    Group,
    Node,
    NodeState,
    SettingValue,
    check_name,
    effective_settings,
)
from provisioner.store.base import TxnConflict, TxnOp

__all__ = ["CAS_RETRIES", "Also", "Inventory", "Versioned", "image_matches"]

#: writes to commit together with a node update: given the updated node and the attempt number
#: (0, 1, ...), so that append-only keys (events, audit) can pick a fresh key on a retry
Also = Callable[[Node, int], Sequence[TxnOp]]
_GROUP_MEMBERS_SHOWN: Final = 5


class Inventory(NodeCache, NameClaims, LeaseRecords, EventLog):
    """Nodes, groups, leases and events, over any KeyValueStore."""

    # -- nodes ---------------------------------------------------------------------------

    async def get_node(self, ref: str) -> Versioned[Node]:
        """A node by MAC (any accepted form) or by name, read from the store."""
        mac = await self.resolve(ref)
        kv = await self.store.get(keys.node(mac))
        if kv is None:
            raise _no_node(ref)
        return Versioned(codec.decode_node(kv.value), kv.mod_revision)

    async def list_nodes(self, *, state: NodeState | None = None, group: str | None = None,
                         image: str | None = None) -> list[Node]:
        """Nodes read from the store; `image` matches as in page_nodes (image_matches)."""
        result = await self.store.range(keys.NODES)
        nodes = [codec.decode_node(kv.value) for kv in result.items]
        return [n for n in nodes if (state is None or n.state is state)
                and (group is None or group in n.groups)
                and (image is None or image_matches(n.image, image))]

    async def add_node(self, node: Node) -> int:
        """Create a node; its MAC, name and IP must all be free."""
        self.check_ip_free(node)
        await self.claim_name(node.name, node.mac)
        try:
            return await self.store.put(keys.node(node.mac.value), codec.encode_node(node),
                                        expect=0)
        except Conflict:
            await self.release_name(node.name, node.mac)
            raise Conflict(f"a node with MAC {node.mac} already exists; "
                           "use `provisioner node set` to change it") from None
        except StoreError:
            await self.release_name(node.name, node.mac)
            raise

    async def update_node(self, ref: str, change: Callable[[Node], Node]) -> Node:
        """Apply `change` to the current node and write it back with CAS, retrying on races."""
        return (await self.update_node_versioned(ref, change)).value

    async def update_node_versioned(self, ref: str,
                                    change: Callable[[Node], Node]) -> Versioned[Node]:
        """`update_node`, returning the revision written too."""
        return (await self.update_node_txn(ref, change))[0]

    async def update_node_txn(self, ref: str, change: Callable[[Node], Node], *,
                              also: Also | None = None) -> tuple[Versioned[Node], list[int]]:
        """`update_node_versioned`, and the revisions of `also`'s writes. With `also`, they are
        committed in one txn with the node's (all or none); a conflict on one of them with an
        `expect` other than 0 is raised as TxnConflict, one with expect=0 (an append-only key
        taken) is retried with the next attempt number."""
        for attempt in range(CAS_RETRIES):
            # The first try starts from the watch-fed view (no store round trip); a stale
            # entry only costs a Conflict, and every retry reads the store.
            current, updated = await self._apply_change(ref, change, cached=attempt == 0)
            written = await self._write_update(current, updated, also, attempt)
            if written is not None:
                self.remember(updated, written[0])
                return Versioned(updated, written[0]), written[1:]
        raise Conflict(f"node {ref!r} kept changing under us; try again")

    async def _write_update(self, current: Versioned[Node], updated: Node, also: Also | None,
                            attempt: int) -> list[int] | None:
        """Write `updated` over `current` (and `also`'s ops); the revisions, or None when a
        race was lost and the update should be tried again."""
        if updated.mac != current.value.mac:
            raise ValidationError("mac", "a node's MAC cannot change; delete and add it")
        if updated.ip != current.value.ip:
            self.check_ip_free(updated)
        renamed = updated.name != current.value.name
        if renamed:
            await self.claim_name(updated.name, updated.mac)
        key, value = keys.node(updated.mac.value), codec.encode_node(updated)
        extra: list[TxnOp] = []
        try:
            if also is None:
                revisions = [await self.store.put(key, value, expect=current.revision)]
            else:
                extra = list(also(updated, attempt))
                revisions = await self.store.txn([TxnOp(key, value, current.revision), *extra])
        except Conflict as exc:
            if renamed:
                await self.release_name(updated.name, updated.mac)
            if isinstance(exc, TxnConflict):
                held = {op.key for op in extra if op.expect}  # not ours to retry: the caller's
                fatal = [k for k in exc.keys if k in held]
                if fatal:
                    raise TxnConflict(str(exc), fatal) from None
            return None
        if renamed:
            await self.release_name(current.value.name, updated.mac)
        return revisions

    async def delete_node(self, ref: str) -> Node:
        current = await self.get_node(ref)
        await self.store.delete(keys.node(current.value.mac.value), expect=current.revision)
        await self.release_name(current.value.name, current.value.mac)
        return current.value

    async def _apply_change(self, ref: str, change: Callable[[Node], Node], *,
                            cached: bool) -> tuple[Versioned[Node], Node]:
        """(the node read, change applied to it). A refusal by `change` of a cached copy is
        checked again against the store: the view may be behind."""
        entry = self.cached_ref(ref) if cached else None
        if entry is not None:
            try:
                return entry, change(entry.value)
            except ProvisionerError:
                pass
        current = await self.get_node(ref)
        return current, change(current.value)

    # -- groups --------------------------------------------------------------------------

    async def get_group(self, name: str) -> Versioned[Group]:
        kv = await self.store.get(keys.group(check_name(name, "group")))
        if kv is None:
            raise _no_group(name)
        return Versioned(codec.decode_group(kv.value), kv.mod_revision)

    async def list_groups(self) -> list[Group]:
        result = await self.store.range(keys.GROUPS)
        return [codec.decode_group(kv.value) for kv in result.items]

    async def add_group(self, group: Group) -> int:
        try:
            return await self.store.put(keys.group(group.name), codec.encode_group(group),
                                        expect=0)
        except Conflict:
            raise Conflict(f"group {group.name!r} already exists; "
                           "use `provisioner group set` to change it") from None

    async def update_group(self, name: str, change: Callable[[Group], Group]) -> Group:
        for _ in range(CAS_RETRIES):
            current = await self.get_group(name)
            updated = change(current.value)
            try:
                await self.store.put(keys.group(name), codec.encode_group(updated),
                                     expect=current.revision)
                return updated
            except Conflict:
                continue
        raise Conflict(f"group {name!r} kept changing under us; try again")

    async def delete_group(self, name: str) -> None:
        current = await self.get_group(name)
        members = [n.name for n in await self.list_nodes(group=name)]
        if members:
            shown = ", ".join(members[:_GROUP_MEMBERS_SHOWN])
            more = " ..." if len(members) > _GROUP_MEMBERS_SHOWN else ""
            raise Conflict(f"group {name!r} still has {len(members)} node(s) ({shown}{more}); "
                           "remove them from the group first")
        await self.store.delete(keys.group(name), expect=current.revision)

    async def effective(self, node: Node,
                        defaults: Mapping[str, SettingValue]) -> dict[str, Effective]:
        groups = {g.name: g for g in await self.list_groups()}
        return effective_settings(node, groups, defaults)


def _no_node(ref: str) -> NotFound:
    return NotFound(f"no node {ref!r}; see `provisioner node list`")


def _no_group(name: str) -> NotFound:
    return NotFound(f"no group {name!r}; see `provisioner group list`")
