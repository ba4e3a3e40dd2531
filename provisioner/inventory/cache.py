"""The inventory's in-memory view of nodes and groups, fed by watching the store.

`start()` loads nodes and groups and follows the store from there, so lookups by MAC, name or
IP (`node_by_mac` ...) are dictionary reads that never wait on the network: the DHCP hot path
uses them. The view is eventually consistent; writes go to the store (repository.py) and are
put into the view at once by the process that made them (`remember`).
"""

from __future__ import annotations

import ipaddress
import logging

from provisioner.errors import Conflict, ValidationError
from provisioner.inventory import codec, keys
from provisioner.inventory.codec import RecordError
from provisioner.inventory.follower import Follower
from provisioner.inventory.versioned import Versioned
from provisioner.nodes.model import Group, MacAddress, Node, NodeState
from provisioner.store.base import EventType, KeyValueStore, WatchEvent

log = logging.getLogger(__name__)


class NodeCache:
    """Nodes by MAC, name and IP, and groups by name, as the store had them a moment ago."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self._nodes: dict[str, Versioned[Node]] = {}
        self._by_name: dict[str, str] = {}
        self._by_ip: dict[ipaddress.IPv4Address, str] = {}
        self._groups: dict[str, Group] = {}
        # Two narrow watches rather than one on keys.ROOT: events, audit entries, tokens and
        # the outbox are written several times per boot callback, and on etcd every one of
        # them would otherwise come back through the watch stream to be decoded and dropped.
        self._follower = Follower(store, keys.NODES, self._apply)
        self._groups_follower = Follower(store, keys.GROUPS, self._apply)

    async def start(self) -> None:
        """Load nodes and groups, then follow changes. Lookups are current from here on."""
        await self._groups_follower.start()
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()
        await self._groups_follower.stop()

    def _apply(self, event: WatchEvent) -> None:
        try:
            if event.key.startswith(keys.NODES):
                self._apply_node(event)
            elif event.key.startswith(keys.GROUPS):
                name = event.key.removeprefix(keys.GROUPS)
                if event.type is EventType.DELETE:
                    self._groups.pop(name, None)
                else:
                    self._groups[name] = codec.decode_group(event.value)
        except (RecordError, ValidationError) as exc:
            log.warning("skipping unreadable store entry %s: %s", event.key, exc)

    def _apply_node(self, event: WatchEvent) -> None:
        mac = event.key.removeprefix(keys.NODES)
        cached = self._nodes.get(mac)
        if cached is not None and cached.revision >= event.revision:
            return  # our own write, already in the view (see remember): no decode again
        old = self._nodes.pop(mac, None)
        if old is not None:
            self._unindex(old.value)
        if event.type is EventType.PUT:
            node = codec.decode_node(event.value)
            self._nodes[mac] = Versioned(node, event.revision)
            self._index(node, mac)

    def _index(self, node: Node, mac: str) -> None:
        self._by_name[node.name] = mac
        if node.ip is not None:
            self._by_ip[node.ip] = mac

    def _unindex(self, node: Node) -> None:
        self._by_name.pop(node.name, None)
        if node.ip is not None:
            self._by_ip.pop(node.ip, None)

    def remember(self, node: Node, revision: int) -> None:
        """Read-your-writes: put a node this process just wrote into the view at once (the
        watch brings the same revision later and skips it)."""
        mac = node.mac.value
        old = self._nodes.get(mac)
        if not self._follower.running or (old is not None and old.revision >= revision):
            return
        if old is not None:
            self._unindex(old.value)
        self._nodes[mac] = Versioned(node, revision)
        self._index(node, mac)

    def node_by_mac(self, mac: MacAddress | str) -> Node | None:
        entry = self._nodes.get(mac.value if isinstance(mac, MacAddress) else mac)
        return entry.value if entry else None

    def cached_node(self, mac: MacAddress) -> Versioned[Node] | None:
        """A node and the revision it was written at, from the view."""
        return self._nodes.get(mac.value)

    def cached_ref(self, ref: str) -> Versioned[Node] | None:
        """A node by name or MAC from the view; None when it is not there (or not started)."""
        mac = self._by_name.get(ref)
        if mac is None:
            try:
                mac = MacAddress(ref).value
            except ValidationError:
                return None
        return self._nodes.get(mac)

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

    def check_ip_free(self, node: Node) -> None:
        """Best effort from the view (when started); DHCP leases are the authority for IPs."""
        owner = self._by_ip.get(node.ip) if node.ip is not None else None
        if owner is not None and owner != node.mac.value:
            holder = self.node_by_mac(owner)
            raise Conflict(f"{node.ip} is already the address of node "
                           f"{holder.name if holder else owner}")

    async def settle(self, revision: int) -> None:
        """After a write at `revision`, let the view catch up so a following list shows it
        (bounded; the view is eventually consistent either way)."""
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


def image_matches(node_image: str | None, wanted: str) -> bool:
    """`compute` matches nodes on compute and compute:N; `compute:2` only compute:2."""
    if node_image is None:
        return False
    return node_image == wanted or (":" not in wanted and node_image.startswith(wanted + ":"))


def _matches(node: Node, state: NodeState | None, group: str | None, image: str | None) -> bool:
    return ((state is None or node.state is state) and (group is None or group in node.groups)
            and (image is None or image_matches(node.image, image)))
