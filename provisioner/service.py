"""Composition root: the store, the inventory, DHCP, TFTP, the boot plane, the lifecycle, the
handoff outbox and the HTTP API, all on one event loop.

The loop is the standard asyncio one, not uvloop: uvloop has no `loop.sendfile` (it raises
NotImplementedError), and the boot plane sends every image with sendfile. uvicorn still uses
httptools for HTTP parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.api.routes.node import CallbackFastPath
from provisioner.boot.binding import AddressBinding
from provisioner.boot.overlay import OverlayBuilder
from provisioner.boot.routes import BootPlane
from provisioner.boot.server import BootHttpServer
from provisioner.boot.slurmfiles import slurm_node_files
from provisioner.config import Settings
from provisioner.dhcp.server import DhcpServer
from provisioner.errors import ConfigError, ProvisionerError
from provisioner.ha.election import Election
from provisioner.ha.membership import Membership
from provisioner.ha.records import HeadRecord
from provisioner.ha.singletons import Singletons
from provisioner.handoff import open_handoff
from provisioner.handoff.outbox import HandoffQueue
from provisioner.images.format.catalog import ImageCatalog
from provisioner.inventory.repository import Inventory
from provisioner.metrics import hooks
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.nodes.resume import resume_rollouts
from provisioner.nodes.retries import BootRetries
from provisioner.nodes.rollout import owner_id
from provisioner.render.environment import Renderer
from provisioner.runtime import supervisor
from provisioner.runtime.retention import Retention
from provisioner.runtime.supervisor import TaskFactory
from provisioner.security.audit import AuditLog
from provisioner.security.privileges import drop_to, private_umask, tighten
from provisioner.security.tokens import ApiTokens, BootTokens
from provisioner.shutdown import ApiServer, GracefulStop, cancel_all
from provisioner.store import open_store
from provisioner.store.base import KeyValueStore
from provisioner.store.timed import TimedStore
from provisioner.tftp.negotiation import SessionConfig
from provisioner.tftp.server import TftpServer, TftpServerConfig, TransferRecord
from provisioner.tftp.sources import SourceResolver, install_boot_binaries, ipxe_chain_provider
from provisioner.tftp.transitions import TransferCompleted

log = logging.getLogger("provisioner")
SWEEP_INTERVAL = 5.0  # seconds between looks for nodes whose boot callback is overdue
#: deliveries to the scheduler in flight at once. Measured (bench/api.py, 200 callbacks/s):
#: with 64, httpcore's pool spent most of the appliance's CPU scanning its connections and
#: callback-to-ready took seconds; a few kept-alive connections keep up with the scheduler.
HANDOFF_CONCURRENCY = 8


def run_service(settings: Settings, *, listen: str, port: int, log_level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    private_umask()
    asyncio.run(_serve(settings, listen, port))


def tftp_server(settings: Settings, inventory: Inventory, http_base: str) -> TftpServer:
    t = settings.tftp
    session = SessionConfig(max_blksize=t.max_blksize, mtu=t.mtu, timeout=t.timeout,
                            max_retries=t.max_retries, max_windowsize=t.max_windowsize)
    config = TftpServerConfig(listen=t.listen, port=t.port, max_transfers=t.max_transfers,
                              max_per_client=t.max_per_client, session=session)
    settings.tftp_root.mkdir(parents=True, exist_ok=True)
    if t.ipxe_dir:
        copied = install_boot_binaries(Path(t.ipxe_dir), settings.tftp_root)
        if copied:
            log.info("tftp: copied %s from %s", ", ".join(copied), t.ipxe_dir)
    resolver = SourceResolver(settings.tftp_root, [ipxe_chain_provider(http_base)])
    return TftpServer(resolver, config, _TransferRecorder(inventory))


def boot_http_base(settings: Settings, server_ip: str | None) -> str:
    """The boot plane's URL as nodes reach it: its listen address, else the DHCP server's."""
    candidates = (settings.boot.listen, server_ip or "", settings.tftp.listen)
    host = next((h for h in candidates if h and h != "0.0.0.0"), "127.0.0.1")
    return f"http://{host}" + ("" if settings.boot.port == 80 else f":{settings.boot.port}")


def api_public_base(settings: Settings, server_ip: str | None) -> str:
    """The API's URL as booted nodes reach it (their callback goes to /node/v1/booted)."""
    if settings.api.public_url:
        return settings.api.public_url.rstrip("/")
    host = boot_http_base(settings, server_ip).removeprefix("http://").rsplit(":", 1)[0]
    if settings.api.listen not in ("", "0.0.0.0", "::"):
        host = settings.api.listen
    return f"http://{host}:{settings.api.port}"


def written_files(settings: Settings) -> list[Path]:
    """What the appliance writes outside its trees: the data dir and the sqlite store's files."""
    db = settings.store_path
    return [settings.data_dir, db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def written_trees(settings: Settings) -> list[Path]:
    return [settings.images_dir, settings.tftp_root]


def check_exposure(settings: Settings, listen: str) -> None:
    """Admin auth may be off only when the API is reachable from this machine alone."""
    if settings.api.auth:
        return
    try:
        loopback = listen == "localhost" or ipaddress.ip_address(listen).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"api.auth is off but the API would listen on {listen}: turn "
                          "[api] auth on, or listen on 127.0.0.1 only")


class _TransferRecorder:
    """Turns finished TFTP transfers into `tftp_served` / `tftp_failed` events on the node the
    client address belongs to (its reservation, else its DHCP lease)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, record: TransferRecord) -> None:
        hooks.tftp_transfer(record.filename, record.event.bytes_sent, record.ok)
        task = asyncio.get_running_loop().create_task(self._record(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, record: TransferRecord) -> None:
        with contextlib.suppress(ValueError):
            ip = ipaddress.IPv4Address(record.client[0])
            try:
                mac = await self._mac_of(ip)
            except ProvisionerError as exc:  # the store is away: the transfer itself went on
                log.warning("could not record a TFTP transfer to %s: %s", ip, exc)
                return
            if mac is None:
                return
            event = record.event
            detail: dict[str, object] = {"file": record.filename, "bytes": event.bytes_sent,
                                         "duration": round(event.duration, 4),
                                         "retransmits": event.retransmits}
            if not isinstance(event, TransferCompleted):
                detail |= {"reason": event.reason, "message": event.message}
            kind = "tftp_served" if record.ok else "tftp_failed"
            try:
                await self.inventory.add_event(BootEvent(mac, kind, time.time(), detail))
            except ProvisionerError as exc:
                log.warning("could not record %s for %s: %s", kind, mac, exc)

    async def _mac_of(self, ip: ipaddress.IPv4Address) -> MacAddress | None:
        node = self.inventory.node_by_ip(ip)
        if node is not None:
            return node.mac
        lease = await self.inventory.get_lease(ip)
        return lease.value.mac if lease is not None else None


class Appliance:
    """Everything `provisioner serve` runs, started in order and stopped in reverse."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        # every store operation timed in one place, whatever the backend (store/timed.py)
        self.store: KeyValueStore = TimedStore(open_store(settings))
        self.inventory = Inventory(self.store)
        self.audit = AuditLog(self.store)
        self.boot_tokens = BootTokens(self.store)
        self.api_tokens = ApiTokens(self.store)
        self.lifecycle = Lifecycle(self.inventory, None, clock, settings.defaults)
        self.catalog = ImageCatalog(settings.images_dir, settings.images.keep)
        self.handoff: HandoffQueue | None = None
        self.dhcp: DhcpServer | None = None
        self.tftp: TftpServer | None = None
        self.boot: BootHttpServer | None = None
        self.boot_plane: BootPlane | None = None
        #: this head among the heads on the store (one process on memory or sqlite); DHCP
        #: asks it from its first packet, and until it has joined this head is fenced
        self.membership = Membership(self.store, HeadRecord(settings.ha.name), settings.ha.ttl)
        #: owns every background task: the watch followers, the sweepers (see /healthz)
        self.supervisor = supervisor.Supervisor()
        #: with `[ha] elect`, the work that must happen once runs while this head leads
        self.singletons = (Singletons(Election(self.store, "singletons", owner_id(settings.ha.name),
                                               ttl=settings.ha.leader_ttl), self.supervisor)
                           if settings.ha.elect else None)

    def counters(self) -> dict[str, dict[str, int]]:
        parts = {"dhcp": self.dhcp, "tftp": self.tftp, "boot": self.boot}
        return {name: dict(part.counters) for name, part in parts.items() if part is not None}

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        stack.push_async_callback(self.store.close)
        # Ambient for the parts started below (their followers and sweepers); closed before
        # the store, after every part has stopped its own tasks.
        stack.push_async_callback(self.supervisor.close)
        stack.callback(supervisor.install(self.supervisor))
        await self.inventory.start()
        stack.push_async_callback(self.inventory.stop)
        status = await self.store.status()
        log.info("store %s at %s, revision %d, %d keys", status.backend, status.endpoint,
                 status.revision, status.keys)
        s = self.settings
        if s.dhcp.mode != "off":
            self.dhcp = DhcpServer(s.dhcp, self.inventory, boot_port=s.boot.port,
                                   defaults=dict(s.defaults), share=self.membership)
            await _bind("dhcp", f"{s.dhcp.interface or 'any interface'} port {s.dhcp.port}",
                        self.dhcp.start(), "check [dhcp] interface and that no other DHCP "
                        "server runs here")
            stack.push_async_callback(self.dhcp.close)
        server_ip = str(self.dhcp.server_ip) if self.dhcp else None
        await self._join(stack, server_ip)
        if s.tftp.enabled:
            self.tftp = tftp_server(s, self.inventory, boot_http_base(s, server_ip))
            await _bind("tftp", f"{s.tftp.listen}:{s.tftp.port}", self.tftp.start(),
                        "set [tftp] listen/port, or enabled = false")
            stack.push_async_callback(self.tftp.close)
        await self.lifecycle.start()
        # Rolling reimages this appliance (or another on the store) left running.
        self._once(stack, "reimage resume", lambda: resume_rollouts(
            s, self.inventory, self.lifecycle, clock=self.clock))
        await self._start_handoff(stack)
        s.images_dir.mkdir(parents=True, exist_ok=True)
        self.boot = BootHttpServer(s.images_dir, s.boot, holds_lease=self._holds_lease)
        self.boot_plane = self._boot_plane(server_ip)
        self.boot_plane.register(self.boot)
        await _bind("boot http", f"{s.boot.listen}:{s.boot.port}",
                    self.boot.start(s.boot.listen, s.boot.port), "set [boot] listen/port")
        stack.push_async_callback(self.boot.close)
        self._once(stack, "lifecycle sweeper", self._sweep)
        retention = Retention(self.store, s.retention, clock=self.clock)
        self._once(stack, "retention", retention.run)
        if self.store.backend == "etcd" and s.retention.compact_interval:
            self._once(stack, "etcd compaction", retention.compact_forever)
        if s.retries.enabled:
            fence = self.singletons.election.fence if self.singletons else None
            retries = BootRetries(self.inventory, self.lifecycle, s.retries, clock=self.clock,
                                  fence=fence)
            self._once(stack, "boot retries", retries.run)
        if self.singletons is not None:  # stopped first: the work stops, the lead is given up
            election = self.supervisor.spawn("leader election", self.singletons.run)
            stack.push_async_callback(election.stop)

    def _once(self, stack: contextlib.AsyncExitStack, name: str, factory: TaskFactory) -> None:
        """Start work that must happen once across the heads: under the election with
        `[ha] elect`, else here and now."""
        if self.singletons is not None:
            self.singletons.add(name, factory)
        else:
            stack.push_async_callback(self.supervisor.spawn(name, factory).stop)

    async def _join(self, stack: contextlib.AsyncExitStack, server_ip: str | None) -> None:
        """Join the live set of heads; from now on DHCP answers this head's share of the
        clients and the boot plane and /healthz follow its fencing (ha/membership.py)."""
        s, membership = self.settings, self.membership
        membership.record = HeadRecord(s.ha.name, s.ha.server_id or server_ip or "",
                                       s.ha.boot_url or boot_http_base(s, server_ip),
                                       s.ha.api_url or api_public_base(s, server_ip), time.time())
        await membership.start()
        stack.push_async_callback(membership.stop)

    def _fenced(self) -> str | None:
        return self.membership.fenced

    def _head_alive(self, name: str) -> bool:
        return name == self.settings.ha.name or name in self.membership.live

    def _boot_plane(self, server_ip: str | None) -> BootPlane:
        s = self.settings
        renderer = Renderer.from_settings(s.images.templates)
        node_files = slurm_node_files(s.handoff.kind, s.handoff.munge_key, s.handoff.slurm_conf)
        if node_files is not None:
            node_files.check()
        overlays = OverlayBuilder(renderer, node_files=node_files)
        return BootPlane(s, self.inventory, self.lifecycle, self.boot_tokens, self.audit,
                         renderer, overlays, self.catalog,
                         boot_base=boot_http_base(s, server_ip),
                         api_base=api_public_base(s, server_ip),
                         scheduler_url=s.scheduler.client_url, clock=self.clock,
                         binding=AddressBinding(self._leased), fenced=self._fenced,
                         head=s.ha.name, head_alive=self._head_alive)

    def _leased(self, mac: MacAddress) -> ipaddress.IPv4Address | None:
        """The address our DHCP server bound to `mac`: in full (and relay) mode its lease that
        has not expired; in proxy mode, where the site's server owns the lease, the address it
        showed us in its PXE exchange (dhcp/sightings.py)."""
        if self.dhcp is None:
            return None
        if self.settings.dhcp.mode == "proxy":
            return self.dhcp.sightings.address_of(mac, self.clock())
        lease = self.dhcp.leases.lease_of(mac)
        if lease is None or lease.state != "bound" or lease.expires <= self.clock():
            return None
        return lease.ip

    def _holds_lease(self, address: str) -> bool:
        """Whether `address` is a node's now: its static address, else a lease `_leased` would
        bind it to, else (proxy mode) its sighting. Such an address may use the boot plane's
        reserved connections (boot/admission.py)."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        if self.inventory.node_by_ip(ip) is not None:
            return True
        if self.dhcp is None:
            return False
        lease = self.dhcp.leases.holder(ip)
        if lease is not None and self._leased(lease.mac) == ip:
            return True
        return self.settings.dhcp.mode == "proxy" and self.dhcp.sightings.shows(ip, self.clock())

    async def _start_handoff(self, stack: contextlib.AsyncExitStack) -> None:
        """The durable outbox to the scheduler, unless `[handoff] kind = "none"`: then booted
        nodes are ready at once (their timeline says the handoff is off)."""
        s = self.settings
        if s.handoff.kind == "none":
            return
        handoff = open_handoff(s)
        stack.push_async_callback(handoff.close)
        self.handoff = HandoffQueue(self.store, handoff, self.lifecycle.confirmed,
                                    first_delay=s.handoff.first_delay,
                                    max_delay=s.handoff.max_delay,
                                    concurrency=HANDOFF_CONCURRENCY)
        self.lifecycle.handoff = self.handoff
        if self.singletons is None:
            await self.handoff.start()
            stack.push_async_callback(self.handoff.stop)
        else:  # any head queues a handoff (in its callback's txn); the leader delivers it
            self.singletons.add("handoff delivery", functools.partial(_deliver, self.handoff))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                for mac in await self.lifecycle.sweep():
                    log.warning("node %s: no boot callback in time; it is failed", mac)
            except ProvisionerError as exc:
                log.warning("lifecycle sweep: %s", exc)

    def api_context(self) -> ApiContext:
        return ApiContext(self.settings, self.inventory, self.lifecycle, self.boot_tokens,
                          self.api_tokens, self.audit, self.catalog, self.counters, self.clock,
                          binding=self.boot_plane.binding if self.boot_plane else None,
                          supervisor=self.supervisor, fenced=self._fenced)


async def _deliver(handoff: HandoffQueue) -> None:
    """The outbox's delivery as one task: while it runs (this head leads), and no longer."""
    await handoff.start()
    try:
        await asyncio.Event().wait()
    finally:
        await handoff.stop()


async def _bind(what: str, where: str, starting: Awaitable[None], advice: str) -> None:
    try:
        await starting
    except OSError as exc:
        raise ConfigError(f"{what}: cannot listen on {where}: {exc.strerror}; {advice}") from None


async def _serve(settings: Settings, listen: str, port: int) -> None:
    check_exposure(settings, listen)
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        tighten(settings.data_dir, written_files(settings)[1:], written_trees(settings))
        if settings.service.user:  # every privileged port is bound: root is no longer needed
            drop_to(settings.service.user, written_files(settings), written_trees(settings))
        context = appliance.api_context()
        stack.push_async_callback(context.refused.close)  # counted refusals into the audit log
        # The boot callback skips the FastAPI stack (same handler, same answers; see
        # api/routes/node.py): at 200 callbacks/s that stack was most of the appliance's CPU.
        app = CallbackFastPath(create_app(context), context)
        # loop="asyncio": we already run inside the loop (see the module docstring on uvloop).
        stop_timeout = settings.service.stop_timeout
        server = ApiServer(uvicorn.Config(app, host=listen, port=port, log_level="info",
                                          access_log=False, http="httptools", loop="asyncio",
                                          timeout_graceful_shutdown=int(stop_timeout)))
        # SIGTERM and Ctrl-C: refuse new work, let the work under way end (shutdown.py).
        stopping = GracefulStop(appliance, server, stop_timeout)
        stack.callback(stopping.install())
        log.info("serving the API on http://%s:%d (Ctrl-C to stop)", listen, port)
        await server.serve()
        if not server.started:
            raise ConfigError(f"could not listen on {listen}:{port}; is the port in use? "
                              "choose another with --port")
        await stopping.finish()
        await cancel_all(context.tasks)
