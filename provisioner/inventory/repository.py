"""Typed access to nodes, groups, leases and events over the store, and the key layout.

    /provisioner/v1/nodes/<mac>          Node as JSON
    /provisioner/v1/names/<name>         the MAC that owns a node name (uniqueness by CAS)
    /provisioner/v1/groups/<name>        Group as JSON
    /provisioner/v1/leases/<ip>          Lease as JSON
    /provisioner/v1/events/<mac>/<seq>   BootEvent as JSON; seq is a zero-padded nanosecond time

`start()` loads nodes and groups into memory and follows the store with `watch`, so lookups by
MAC, name or IP (`node_by_mac` ...) are dictionary reads that never wait on the network: the
DHCP hot path uses them. Writes always go to the store with compare-and-swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from provisioner.errors import Conflict, NotFound, ProvisionerError, StoreError, ValidationError
from provisioner.nodes.model import (
    BootEvent,
    Effective,
    Firmware,
    Group,
    Lease,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    check_hostname,
    check_ipv4,
    check_name,
    effective_settings,
    parse_enum,
)
from provisioner.store.base import EventType, KeyValueStore, TxnConflict, TxnOp, WatchEvent

log = logging.getLogger(__name__)

ROOT = "/provisioner/v1/"
NODES = ROOT + "nodes/"
NAMES = ROOT + "names/"
GROUPS = ROOT + "groups/"
LEASES = ROOT + "leases/"
EVENTS = ROOT + "events/"
CAS_RETRIES = 20
#: seconds before a name claim without its node counts as left over from a crash
CLAIM_GRACE = 30.0
T = TypeVar("T")
#: writes to commit together with a node update: given the updated node and the attempt number
#: (0, 1, ...), so that append-only keys (events, audit) can pick a fresh key on a retry
Also = Callable[[Node, int], Sequence[TxnOp]]


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A value and the store revision it was read at (pass it back as `expect`)."""

    value: T
    revision: int


# -- JSON codecs: the one place that knows how a value looks in the store ----------------------


def node_to_dict(node: Node) -> dict[str, Any]:
    return {
        "mac": node.mac.value, "name": node.name, "ip": str(node.ip) if node.ip else None,
        "groups": list(node.groups), "image": node.image, "firmware": node.firmware.value,
        "state": node.state.value, "settings": dict(node.settings), "hardware": dict(node.hardware),
    }


def node_from_dict(data: Mapping[str, Any]) -> Node:
    return Node(
        mac=MacAddress(data["mac"]), name=data["name"], ip=data.get("ip"),
        groups=tuple(data.get("groups", ())), image=data.get("image"),
        firmware=parse_enum(Firmware, data.get("firmware", "unknown"), "firmware"),
        state=parse_enum(NodeState, data.get("state", "registered"), "state"),
        settings=data.get("settings", {}), hardware=data.get("hardware", {}),
    )


def group_to_dict(group: Group) -> dict[str, Any]:
    return {"name": group.name, "settings": dict(group.settings), "description": group.description}


def group_from_dict(data: Mapping[str, Any]) -> Group:
    return Group(data["name"], data.get("settings", {}), data.get("description", ""))


def lease_to_dict(lease: Lease) -> dict[str, Any]:
    return {"ip": str(lease.ip), "mac": lease.mac.value, "expires": lease.expires,
            "hostname": lease.hostname, "client_id": lease.client_id, "state": lease.state}


def lease_from_dict(data: Mapping[str, Any]) -> Lease:
    return Lease(ipaddress.IPv4Address(data["ip"]), MacAddress(data["mac"]), data["expires"],
                 data.get("hostname"), data.get("client_id"), data.get("state", "bound"))


def event_to_dict(event: BootEvent) -> dict[str, Any]:
    return {"mac": event.mac.value, "kind": event.kind, "at": event.at,
            "detail": dict(event.detail)}


def event_from_dict(data: Mapping[str, Any]) -> BootEvent:
    return BootEvent(MacAddress(data["mac"]), data["kind"], data["at"], data.get("detail", {}))


def _claim(mac: MacAddress) -> bytes:
    """A name claim: the owner's MAC and when it was claimed ("aa:bb:.. 1700000000.0")."""
    return f"{mac.value} {time.time():.3f}".encode()


def _parse_claim(value: bytes) -> tuple[str, float]:
    mac, _, at = value.decode().partition(" ")
    try:
        return mac, float(at)
    except ValueError:
        return mac, 0.0


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class Follower:
    """Keeps an in-memory view of everything under `prefix`: `start()` feeds the current keys to
    `apply` as PUT events, then every later change from `watch`, so the view never misses one.
    Used by the inventory's node cache and by the DHCP lease book."""

    def __init__(self, store: KeyValueStore, prefix: str,
                 apply: Callable[[WatchEvent], None]) -> None:
        self.store, self.prefix, self._apply = store, prefix, apply
        self._task: asyncio.Task[None] | None = None
        #: the newest store revision applied to the view (read-your-writes waits on it)
        self.applied = 0
        self._advanced = asyncio.Event()

    async def start(self) -> None:
        result = await self.store.range(self.prefix)
        for kv in result.items:
            self._apply(WatchEvent(EventType.PUT, kv.key, kv.value, kv.mod_revision))
        self.applied = result.revision
        self._task = asyncio.create_task(self._follow(result.revision + 1))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, start: int) -> None:
        async for event in self.store.watch(self.prefix, start):
            self._apply(event)
            self.applied = max(self.applied, event.revision)
            self._advanced.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_applied(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the view includes `revision`; False if it did not in time."""
        if self._task is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied < revision:
            self._advanced.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True


class Inventory:
    """Nodes, groups, leases and events, over any KeyValueStore."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self._nodes: dict[str, Versioned[Node]] = {}
        self._by_name: dict[str, str] = {}
        self._by_ip: dict[ipaddress.IPv4Address, str] = {}
        self._groups: dict[str, Group] = {}
        # Two narrow watches rather than one on ROOT: events, audit entries, tokens and the
        # outbox are written several times per boot callback, and on etcd every one of them
        # would otherwise come back through the watch stream to be decoded and dropped.
        self._follower = Follower(store, NODES, self._apply)
        self._groups_follower = Follower(store, GROUPS, self._apply)

    # -- the cache -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load nodes and groups, then follow changes. Lookups are current from here on."""
        await self._groups_follower.start()
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()
        await self._groups_follower.stop()

    def _apply(self, event: WatchEvent) -> None:
        try:
            if event.key.startswith(NODES):
                self._apply_node(event)
            elif event.key.startswith(GROUPS):
                name = event.key.removeprefix(GROUPS)
                if event.type is EventType.DELETE:
                    self._groups.pop(name, None)
                else:
                    self._groups[name] = group_from_dict(json.loads(event.value))
        except (ValueError, KeyError, ValidationError) as exc:
            log.warning("skipping unreadable store entry %s: %s", event.key, exc)

    def _apply_node(self, event: WatchEvent) -> None:
        mac = event.key.removeprefix(NODES)
        cached = self._nodes.get(mac)
        if cached is not None and cached.revision >= event.revision:
            return  # our own write, already in the cache (see _remember): no decode again
        old = self._nodes.pop(mac, None)
        if old is not None:
            self._by_name.pop(old.value.name, None)
            if old.value.ip is not None:
                self._by_ip.pop(old.value.ip, None)
        if event.type is EventType.PUT:
            node = node_from_dict(json.loads(event.value))
            self._nodes[mac] = Versioned(node, event.revision)
            self._by_name[node.name] = mac
            if node.ip is not None:
                self._by_ip[node.ip] = mac

    def _remember(self, node: Node, revision: int) -> None:
        """Read-your-writes: put a node this process just wrote into the cache at once (the
        watch brings the same revision later and skips it)."""
        mac = node.mac.value
        old = self._nodes.get(mac)
        if not self._follower.running or (old is not None and old.revision >= revision):
            return
        if old is not None:
            self._by_name.pop(old.value.name, None)
            if old.value.ip is not None:
                self._by_ip.pop(old.value.ip, None)
        self._nodes[mac] = Versioned(node, revision)
        self._by_name[node.name] = mac
        if node.ip is not None:
            self._by_ip[node.ip] = mac

    def node_by_mac(self, mac: MacAddress | str) -> Node | None:
        entry = self._nodes.get(mac.value if isinstance(mac, MacAddress) else mac)
        return entry.value if entry else None

    def cached_node(self, mac: MacAddress) -> Versioned[Node] | None:
        """A node and the revision it was written at, from the cache."""
        return self._nodes.get(mac.value)

    def node_by_name(self, name: str) -> Node | None:
        mac = self._by_name.get(name)
        return self.node_by_mac(mac) if mac else None

    def node_by_ip(self, ip: ipaddress.IPv4Address) -> Node | None:
        mac = self._by_ip.get(ip)
        return self.node_by_mac(mac) if mac else None

    def cached_nodes(self) -> list[Node]:
        return [entry.value for entry in self._nodes.values()]

    def cached_groups(self) -> dict[str, Group]:
        return dict(self._groups)

    async def settle(self, revision: int) -> None:
        """After a write at `revision`, let the cached view catch up so a following list
        shows it (bounded; the cache is eventually consistent either way)."""
        await self._follower.wait_applied(revision)

    def page_nodes(self, *, limit: int, cursor: str | None = None,
                   state: NodeState | None = None, group: str | None = None,
                   image: str | None = None) -> tuple[list[Node], str | None]:
        """A page of cached nodes sorted by name, after the name `cursor`; the next cursor is
        the last name shown, or None on the last page. `image` matches NAME and NAME:VERSION."""
        names = sorted(n for n in self._by_name if cursor is None or n > cursor)
        page: list[Node] = []
        for name in names:
            node = self.node_by_name(name)
            if node is None or not _matches(node, state, group, image):
                continue
            if len(page) == limit:
                return page, page[-1].name
            page.append(node)
        return page, None

    # -- nodes ---------------------------------------------------------------------------

    async def get_node(self, ref: str) -> Versioned[Node]:
        """A node by MAC (any accepted form) or by name, read from the store."""
        mac = await self._resolve(ref)
        kv = await self.store.get(NODES + mac)
        if kv is None:
            raise NotFound(f"no node {ref!r}; see `provisioner node list`")
        return Versioned(node_from_dict(json.loads(kv.value)), kv.mod_revision)

    async def _resolve(self, ref: str) -> str:
        try:
            return MacAddress(ref).value
        except ValidationError:
            pass
        try:
            name = check_hostname(ref)
        except ValidationError:
            raise NotFound(f"{ref!r} is neither a MAC address nor a node name") from None
        kv = await self.store.get(NAMES + name)
        if kv is None:
            raise NotFound(f"no node named {ref!r}; see `provisioner node list`")
        return _parse_claim(kv.value)[0]

    async def list_nodes(self, *, state: NodeState | None = None, group: str | None = None,
                         image: str | None = None) -> list[Node]:
        """Nodes read from the store; `image` matches as in page_nodes (image_matches)."""
        result = await self.store.range(NODES)
        nodes = [node_from_dict(json.loads(kv.value)) for kv in result.items]
        return [n for n in nodes if _matches(n, state, group, image)]

    async def add_node(self, node: Node) -> int:
        """Create a node; its MAC, name and IP must all be free."""
        self._check_ip_free(node)
        await self._claim_name(node.name, node.mac)
        try:
            return await self.store.put(NODES + node.mac.value, _dump(node_to_dict(node)), expect=0)
        except Conflict:
            await self._release_name(node.name, node.mac)
            raise Conflict(f"a node with MAC {node.mac} already exists; "
                           "use `provisioner node set` to change it") from None
        except StoreError:
            await self._release_name(node.name, node.mac)
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
            # The first try starts from the watch-fed cache (no store round trip); a stale
            # entry only costs a Conflict, and every retry reads the store.
            current, updated = await self._apply_change(ref, change, cached=attempt == 0)
            if updated.mac != current.value.mac:
                raise ValidationError("mac", "a node's MAC cannot change; delete and add it")
            if updated.ip != current.value.ip:
                self._check_ip_free(updated)
            renamed = updated.name != current.value.name
            if renamed:
                await self._claim_name(updated.name, updated.mac)
            key, value = NODES + updated.mac.value, _dump(node_to_dict(updated))
            extra: list[TxnOp] = []
            try:
                if also is None:
                    revisions = [await self.store.put(key, value, expect=current.revision)]
                else:
                    extra = list(also(updated, attempt))
                    revisions = await self.store.txn(
                        [TxnOp(key, value, current.revision), *extra])
            except TxnConflict as exc:
                if renamed:
                    await self._release_name(updated.name, updated.mac)
                held = {op.key for op in extra if op.expect}  # not ours to retry: the caller's
                fatal = [k for k in exc.keys if k in held]
                if fatal:
                    raise TxnConflict(str(exc), fatal) from None
                continue
            except Conflict:
                if renamed:
                    await self._release_name(updated.name, updated.mac)
                continue
            if renamed:
                await self._release_name(current.value.name, updated.mac)
            self._remember(updated, revisions[0])
            return Versioned(updated, revisions[0]), revisions[1:]
        raise Conflict(f"node {ref!r} kept changing under us; try again")

    async def delete_node(self, ref: str) -> Node:
        current = await self.get_node(ref)
        await self.store.delete(NODES + current.value.mac.value, expect=current.revision)
        await self._release_name(current.value.name, current.value.mac)
        return current.value

    async def _apply_change(self, ref: str, change: Callable[[Node], Node], *,
                            cached: bool) -> tuple[Versioned[Node], Node]:
        """(the node read, change applied to it). A refusal by `change` of a cached copy is
        checked again against the store: the cache may be behind."""
        entry = self._cached_ref(ref) if cached else None
        if entry is not None:
            try:
                return entry, change(entry.value)
            except ProvisionerError:
                pass
        current = await self.get_node(ref)
        return current, change(current.value)

    def _cached_ref(self, ref: str) -> Versioned[Node] | None:
        mac = self._by_name.get(ref)
        if mac is None:
            try:
                mac = MacAddress(ref).value
            except ValidationError:
                return None
        return self._nodes.get(mac)

    def _check_ip_free(self, node: Node) -> None:
        """Best effort from the cache (when started); DHCP leases are the authority for IPs."""
        owner = self._by_ip.get(node.ip) if node.ip is not None else None
        if owner is not None and owner != node.mac.value:
            holder = self.node_by_mac(owner)
            raise Conflict(f"{node.ip} is already the address of node "
                           f"{holder.name if holder else owner}")

    async def _claim_name(self, name: str, mac: MacAddress) -> None:
        """Names are unique: the name key is created by CAS. A claim left behind by a crash
        (its node absent or renamed, and older than CLAIM_GRACE) is taken over; a younger one
        may belong to an add still in flight, so it is refused like a live one."""
        key = NAMES + name
        try:
            await self.store.put(key, _claim(mac), expect=0)
            return
        except Conflict:
            pass
        kv = await self.store.get(key)
        if kv is not None:
            owner_mac, claimed_at = _parse_claim(kv.value)
            if owner_mac != mac.value:
                owner = await self.store.get(NODES + owner_mac)
                alive = owner is not None and json.loads(owner.value).get("name") == name
                if alive or time.time() - claimed_at < CLAIM_GRACE:
                    raise Conflict(f"the name {name!r} belongs to node {owner_mac}; "
                                   "choose another name")
        await self.store.put(key, _claim(mac), expect=kv.mod_revision if kv is not None else 0)

    async def _release_name(self, name: str, mac: MacAddress) -> None:
        kv = await self.store.get(NAMES + name)
        if kv is not None and _parse_claim(kv.value)[0] == mac.value:
            with contextlib.suppress(Conflict, NotFound):
                await self.store.delete(NAMES + name, expect=kv.mod_revision)

    # -- groups --------------------------------------------------------------------------

    async def get_group(self, name: str) -> Versioned[Group]:
        kv = await self.store.get(GROUPS + check_name(name, "group"))
        if kv is None:
            raise NotFound(f"no group {name!r}; see `provisioner group list`")
        return Versioned(group_from_dict(json.loads(kv.value)), kv.mod_revision)

    async def list_groups(self) -> list[Group]:
        result = await self.store.range(GROUPS)
        return [group_from_dict(json.loads(kv.value)) for kv in result.items]

    async def add_group(self, group: Group) -> int:
        try:
            return await self.store.put(GROUPS + group.name, _dump(group_to_dict(group)), expect=0)
        except Conflict:
            raise Conflict(f"group {group.name!r} already exists; "
                           "use `provisioner group set` to change it") from None

    async def update_group(self, name: str, change: Callable[[Group], Group]) -> Group:
        for _ in range(CAS_RETRIES):
            current = await self.get_group(name)
            updated = change(current.value)
            try:
                await self.store.put(GROUPS + name, _dump(group_to_dict(updated)),
                                     expect=current.revision)
                return updated
            except Conflict:
                continue
        raise Conflict(f"group {name!r} kept changing under us; try again")

    async def delete_group(self, name: str) -> None:
        current = await self.get_group(name)
        members = [n.name for n in await self.list_nodes(group=name)]
        if members:
            shown = ", ".join(members[:5]) + (" ..." if len(members) > 5 else "")
            raise Conflict(f"group {name!r} still has {len(members)} node(s) ({shown}); "
                           "remove them from the group first")
        await self.store.delete(GROUPS + name, expect=current.revision)

    async def effective(self, node: Node,
                        defaults: Mapping[str, SettingValue]) -> dict[str, Effective]:
        groups = {g.name: g for g in await self.list_groups()}
        return effective_settings(node, groups, defaults)

    # -- leases --------------------------------------------------------------------------

    async def get_lease(self, ip: ipaddress.IPv4Address) -> Versioned[Lease] | None:
        kv = await self.store.get(LEASES + str(check_ipv4(ip)))
        if kv is None:
            return None
        return Versioned(lease_from_dict(json.loads(kv.value)), kv.mod_revision)

    async def put_lease(self, lease: Lease, *, expect: int | None) -> int:
        """Write a lease with CAS (`expect=0` to take a free address). Two head nodes sharing
        one etcd race here; exactly one wins, the other gets Conflict and picks again."""
        return await self.store.put(LEASES + str(lease.ip), _dump(lease_to_dict(lease)),
                                    expect=expect)

    async def list_leases(self) -> list[Lease]:
        result = await self.store.range(LEASES)
        return [lease_from_dict(json.loads(kv.value)) for kv in result.items]

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def event_op(event: BootEvent, bump: int = 0) -> TxnOp:
        """The write that records `event` (create-only; `bump` moves it to the next key)."""
        key = f"{EVENTS}{event.mac.value}/{int(event.at * 1e9) + bump:020d}"
        return TxnOp(key, _dump(event_to_dict(event)), expect=0)

    async def add_event(self, event: BootEvent) -> None:
        seq = int(event.at * 1e9)
        for bump in range(CAS_RETRIES):
            key = f"{EVENTS}{event.mac.value}/{seq + bump:020d}"
            with contextlib.suppress(Conflict):
                await self.store.put(key, _dump(event_to_dict(event)), expect=0)
                return
        raise Conflict(f"could not record event {event.kind} for {event.mac}")

    async def list_events(self, mac: MacAddress) -> list[BootEvent]:
        result = await self.store.range(f"{EVENTS}{mac.value}/")
        return [event_from_dict(json.loads(kv.value)) for kv in result.items]


def image_matches(node_image: str | None, wanted: str) -> bool:
    """`compute` matches nodes on compute and compute:N; `compute:2` only compute:2."""
    if node_image is None:
        return False
    return node_image == wanted or (":" not in wanted and node_image.startswith(wanted + ":"))


def _matches(node: Node, state: NodeState | None, group: str | None, image: str | None) -> bool:
    return ((state is None or node.state is state) and (group is None or group in node.groups)
            and (image is None or image_matches(node.image, image)))
