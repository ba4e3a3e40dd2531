"""Boot-plane routes rendered per node, registered on BootHttpServer by service.py.

    /boot/<mac>.ipxe                     the node's iPXE script; a GET starts its boot
    /boot/nodes/<mac>/overlay.cpio.xz    its overlay, with its one-boot token appended
    /boot/nodes/<mac>/install.ks         its install kickstart, only while provisioning

A registered node's files are served only to the address bound to its MAC (boot/binding.py);
anyone else gets 403 and the plane changes nothing. Only a GET of the script from the node's
own address has a side effect: the node's boot starts (it is provisioning, its previous
token is void). HEAD never changes anything. The overlay is served only while the node is
provisioning, and its token is issued once per boot: a second fetch in the same boot (iPXE
retrying a broken transfer) gets the same bytes back from memory, or 409 when this process did
not build them (it restarted, or another head node did) - unless the head that did is no
longer live: then its token is replaced here, so the boot fallback to another head works.

iPXE never gets a 404 for a script: an unknown MAC, a node with no (or a missing) image, a
discovered node not accepted yet and a retired node all get a script that says why, waits and
asks again, so a node racked before it is registered (or accepted) boots as soon as it is. A
discovered node's overlay and kickstart are refused (403) until it is accepted. A failed
render fails that node only: 500 with the one-line reason, and the reason on its timeline.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from provisioner.boot.binding import AddressBinding, Refusals
from provisioner.boot.httpcore import HttpRequest
from provisioner.boot.overlay import OverlayBuilder
from provisioner.boot.server import BootHttpServer, Reply
from provisioner.config import Settings
from provisioner.errors import (
    ConfigError,
    Conflict,
    ImageError,
    InvalidTransition,
    NotFound,
    TemplateError,
    ValidationError,
)
from provisioner.images.format.catalog import ImageCatalog, ImageVersion
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import BOOTABLE, Lifecycle
from provisioner.nodes.model import (
    BootEvent,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    effective_values,
)
from provisioner.render.environment import BootContext, Network, Renderer
from provisioner.security.audit import AuditLog
from provisioner.security.tokens import BootTokens

log = logging.getLogger(__name__)

SCRIPT: Final = re.compile(r"/boot/([0-9A-Fa-f:.-]{12,17})\.ipxe")
NODE_FILE: Final = re.compile(
    r"/boot/nodes/([0-9A-Fa-f:.-]{12,17})/(overlay\.cpio\.xz|install\.ks)")
IPXE: Final = "text/plain; charset=utf-8"
WAIT_SECONDS: Final = 30


def wait_script(script_url: str, reason: str) -> str:
    """A script that says why it cannot boot yet, then asks again (never a dead end)."""
    reason = reason.replace("\n", " ")
    return (f"#!ipxe\n:wait\necho provisioner: {reason}\n"
            f"echo provisioner: asking again in {WAIT_SECONDS} s\nsleep {WAIT_SECONDS}\n"
            f"chain --replace --autofree {script_url} || goto wait\n")


@dataclass
class BootPlane:
    """Everything the routes need; `boot_base` and `api_base` are URLs as nodes reach them."""

    settings: Settings
    inventory: Inventory
    lifecycle: Lifecycle
    tokens: BootTokens
    audit: AuditLog
    renderer: Renderer
    overlays: OverlayBuilder
    catalog: ImageCatalog
    boot_base: str
    api_base: str
    scheduler_url: str = ""
    clock: Callable[[], float] = time.time
    binding: AddressBinding = field(default_factory=AddressBinding)
    #: why this head may not issue boot tokens now (ha/membership.py: it lost its store
    #: session, and another head may be serving its nodes); None: it may
    fenced: Callable[[], str | None] = lambda: None
    #: this head's name, and whether a head is live (ha/membership.py): a boot token that a
    #: dead head issued is replaced, so a node whose head died mid-boot gets its overlay here
    head: str = ""
    head_alive: Callable[[str], bool] = lambda name: True
    refusals: Refusals = field(init=False)
    _overlays: dict[MacAddress, bytes] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.refusals = Refusals(self.clock)

    def register(self, server: BootHttpServer) -> None:
        server.route("/boot/nodes/", self.node_file)
        server.route("/boot/", self.script)

    # -- /boot/<mac>.ipxe -----------------------------------------------------------------

    async def script(self, request: HttpRequest, client: str) -> Reply:
        match = SCRIPT.fullmatch(request.path)
        if match is None:
            raise NotFound(f"{request.path}: no such boot resource")
        mac = _mac(match.group(1), request.path)
        url = f"{self.boot_base}/boot/{mac.value}.ipxe"
        node = self.inventory.node_by_mac(mac)
        if node is None:
            return _ipxe(wait_script(url, f"{mac} is not a registered node; add it with "
                                     f"`provisioner node add {mac} --name NAME`"))
        if self._waiting_for_accept(node):
            return _ipxe(wait_script(url, f"node {node.name} ({mac}) is discovered, waiting for "
                                     f"`provisioner node accept {node.name}`"))
        if node.state not in BOOTABLE:
            return _ipxe(wait_script(url, f"node {node.name} is {node.state}; boots resume "
                                     "when it is registered again"))
        if not self.binding.allows(node, client):
            return self._refuse(node, request, client)
        image = self._image(node)
        try:
            context = self.context(node, image)
            template = str(context.settings.get("ipxe_script") or "ipxe/boot.ipxe.j2")
            text = self.renderer.render(template, context.variables(), node=node.name)
        except TemplateError as exc:
            return await self._render_failed(node, "ipxe", exc)
        if image is not None and request.method == "GET":
            if reason := self.fenced():  # a boot started now would need a token
                return _ipxe(wait_script(url, f"this head cannot start a boot: {reason}"))
            await self._boot_started(node, image)
        return _ipxe(text)

    def _waiting_for_accept(self, node: Node) -> bool:
        """A discovered node boots nothing until an admin accepts it ([dhcp] auto_accept: at
        once, in a lab): anything on the hostile provisioning network can send a DISCOVER."""
        return node.state is NodeState.DISCOVERED and not self.settings.dhcp.auto_accept

    async def _boot_started(self, node: Node, image: ImageVersion) -> None:
        try:
            await self.lifecycle.boot_script_served(node.mac, image.name, image.version)
        except InvalidTransition as exc:  # it moved meanwhile; the script is still right
            log.info("boot: %s", exc)
            return
        self._overlays.pop(node.mac, None)
        await self.tokens.new_boot(node.mac)

    def _refuse(self, node: Node, request: HttpRequest, client: str) -> Reply:
        bound = self.binding.bound_address(node)
        self.refusals.refuse(client, request.path, f"not the address of {node.mac}")
        where = f"its address {bound}" if bound else "the address our DHCP server leases it"
        return Reply(f"{request.path} is served only to node {node.name}'s own address "
                     f"({where}); {client} is not it\n".encode(), status=403)

    def _image(self, node: Node) -> ImageVersion | None:
        """The image version the node boots, or None (no image set, or it does not exist:
        the script then waits, and the node's timeline says why)."""
        ref = self._effective(node).get("image")
        if not ref:
            return None
        try:
            return self.catalog.resolve(str(ref))
        except (ImageError, ValueError) as exc:
            log.warning("boot: node %s: %s", node.name, exc)
            return None

    def _effective(self, node: Node) -> dict[str, SettingValue]:
        return effective_values(node, self.inventory.cached_groups(), self.settings.defaults)

    def context(self, node: Node, image: ImageVersion | None, token: str | None = None,
                ) -> BootContext:
        return BootContext.for_node(
            node, self._effective(node), boot_base=self.boot_base, api_base=self.api_base,
            image_name=image.name if image else None,
            image_version=image.version if image else None,
            network=Network.for_ip(node.ip, self.settings.dhcp.subnets),
            scheduler_url=self.scheduler_url, token=token,
            fallbacks=self.settings.ha.fallback_heads(self.settings.api.port))

    # -- /boot/nodes/<mac>/... ------------------------------------------------------------

    async def node_file(self, request: HttpRequest, client: str) -> Reply:
        match = NODE_FILE.fullmatch(request.path)
        if match is None:
            raise NotFound(f"{request.path}: no such boot resource")
        mac = _mac(match.group(1), request.path)
        cached = self.inventory.cached_node(mac)
        if cached is None:
            raise NotFound(f"{mac} is not a registered node")
        node = cached.value
        if not self.binding.allows(node, client):
            return self._refuse(node, request, client)
        if self._waiting_for_accept(node):
            self.refusals.refuse(client, request.path, f"{node.mac} is discovered, not accepted",
                                 "not_accepted")
            return Reply(f"node {node.name} is discovered: its boot files are served once it is "
                         f"accepted (`provisioner node accept {node.name}`)\n".encode(),
                         status=403)
        if match.group(2) == "install.ks":
            return await self.kickstart(node)
        if request.method == "HEAD":  # a HEAD must not use up the boot's one token
            return Reply(b"", "application/octet-stream")
        return await self.overlay(node, cached.revision)

    async def overlay(self, node: Node, revision: int) -> Reply:
        if node.state is not NodeState.PROVISIONING:
            self._overlays.pop(node.mac, None)
            return Reply(f"node {node.name} is {node.state}: its overlay is served only "
                         "while it is provisioning; reboot it into its boot script first\n"
                         .encode(), status=409)
        if reason := self.fenced():
            return Reply(f"this head issues no boot token while fenced ({reason}); the node "
                         "boots again through a head that is a live member\n".encode(),
                         status=503)
        built = self._overlays.get(node.mac)
        if built is not None:
            return Reply(built, "application/octet-stream")
        image = self._image(node)
        try:
            token = await self.tokens.issue(node.mac, self.settings.api.boot_token_ttl,
                                            self.clock(), issuer=self.head,
                                            replaceable=self._issued_by_a_dead_head)
        except Conflict as exc:
            return Reply(f"{exc}\n".encode(), status=409)
        try:
            data = self.overlays.build(self.context(node, image, token), node_revision=revision)
        except (TemplateError, ConfigError) as exc:  # ConfigError: a Slurm file unreadable
            return await self._render_failed(node, "overlay", exc)
        await self.audit.record(f"node:{node.mac}", "boot_token.issue", node.mac.value, "ok",
                                self.clock())
        await self._event(node, "overlay_served", {"bytes": len(data)})
        self._overlays[node.mac] = data
        return Reply(data, "application/octet-stream")

    def _issued_by_a_dead_head(self, issuer: str) -> bool:
        return bool(issuer) and issuer != self.head and not self.head_alive(issuer)

    async def kickstart(self, node: Node) -> Reply:
        if node.state is not NodeState.PROVISIONING:
            return Reply(f"node {node.name} is {node.state}: its kickstart is served only "
                         "while it is provisioning; reboot it into its boot script first\n"
                         .encode(), status=403)
        try:
            text = self.renderer.render("kickstart/install.ks.j2",
                                        self.context(node, self._image(node)).variables(),
                                        node=node.name)
        except TemplateError as exc:
            return await self._render_failed(node, "kickstart", exc)
        await self._event(node, "kickstart_served", {})
        return Reply(text.encode())

    # -- failures -------------------------------------------------------------------------

    async def _render_failed(self, node: Node, what: str,
                             exc: TemplateError | ConfigError) -> Reply:
        reason = " ".join(str(exc).split())
        log.warning("boot: %s for node %s failed: %s", what, node.name, reason)
        await self._event(node, "render_failed", {"what": what, "error": reason})
        # already failed, or in a state a render does not change: the event says it all
        with contextlib.suppress(InvalidTransition):
            await self.lifecycle.fail(node.mac, f"{what} render failed: {reason}")
        return Reply(f"{what} render failed for node {node.name}: {reason}\n".encode(),
                     status=500)

    async def _event(self, node: Node, kind: str, detail: dict[str, object]) -> None:
        await self.inventory.add_event(BootEvent(node.mac, kind, self.clock(), detail))


def _mac(text: str, path: str) -> MacAddress:
    try:
        return MacAddress(text)
    except ValidationError:
        raise NotFound(f"{path}: no such boot resource") from None


def _ipxe(text: str) -> Reply:
    return Reply(text.encode(), IPXE)
