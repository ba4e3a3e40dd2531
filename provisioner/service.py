"""Composition root: the store, the inventory, TFTP and the HTTP API on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable
from pathlib import Path

import uvicorn

from provisioner.api.app import create_app
from provisioner.boot.server import BootHttpServer
from provisioner.config import Settings
from provisioner.dhcp.server import DhcpServer
from provisioner.errors import ConfigError, ProvisionerError
from provisioner.inventory import Inventory
from provisioner.model import BootEvent, MacAddress
from provisioner.store import open_store
from provisioner.tftp.server import TftpServer, TftpServerConfig, TransferRecord
from provisioner.tftp.session import SessionConfig, TransferCompleted
from provisioner.tftp.sources import SourceResolver, install_boot_binaries, ipxe_chain_provider

log = logging.getLogger("provisioner")


def run_service(settings: Settings, *, listen: str, port: int, log_level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


class _TransferRecorder:
    """Turns finished TFTP transfers into `tftp_served` / `tftp_failed` events on the node the
    client address belongs to (its reservation, else its DHCP lease)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, record: TransferRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._record(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, record: TransferRecord) -> None:
        with contextlib.suppress(ValueError):
            ip = ipaddress.IPv4Address(record.client[0])
            mac = await self._mac_of(ip)
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.inventory = Inventory(self.store)
        self.dhcp: DhcpServer | None = None
        self.tftp: TftpServer | None = None
        self.boot: BootHttpServer | None = None

    def counters(self) -> dict[str, dict[str, int]]:
        parts = {"dhcp": self.dhcp, "tftp": self.tftp, "boot": self.boot}
        return {name: dict(part.counters) for name, part in parts.items() if part is not None}

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        stack.push_async_callback(self.store.close)
        await self.inventory.start()
        stack.push_async_callback(self.inventory.stop)
        status = await self.store.status()
        log.info("store %s at %s, revision %d, %d keys", status.backend, status.endpoint,
                 status.revision, status.keys)
        s = self.settings
        if s.dhcp.mode != "off":
            self.dhcp = DhcpServer(s.dhcp, self.inventory, boot_port=s.boot.port,
                                   defaults=dict(s.defaults))
            await _bind("dhcp", f"{s.dhcp.interface or 'any interface'} port {s.dhcp.port}",
                        self.dhcp.start(), "check [dhcp] interface and that no other DHCP "
                        "server runs here")
            stack.push_async_callback(self.dhcp.close)
        server_ip = str(self.dhcp.server_ip) if self.dhcp else None
        if s.tftp.enabled:
            self.tftp = tftp_server(s, self.inventory, boot_http_base(s, server_ip))
            await _bind("tftp", f"{s.tftp.listen}:{s.tftp.port}", self.tftp.start(),
                        "set [tftp] listen/port, or enabled = false")
            stack.push_async_callback(self.tftp.close)
        s.images_dir.mkdir(parents=True, exist_ok=True)
        self.boot = BootHttpServer(s.images_dir, max_connections=s.boot.max_connections)
        await _bind("boot http", f"{s.boot.listen}:{s.boot.port}",
                    self.boot.start(s.boot.listen, s.boot.port), "set [boot] listen/port")
        stack.push_async_callback(self.boot.close)


async def _bind(what: str, where: str, starting: Awaitable[None], advice: str) -> None:
    try:
        await starting
    except OSError as exc:
        raise ConfigError(f"{what}: cannot listen on {where}: {exc.strerror}; {advice}") from None


async def _serve(settings: Settings, listen: str, port: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        appliance = Appliance(settings)
        await appliance.start(stack)
        app = create_app(appliance.inventory, counters=appliance.counters)
        server = uvicorn.Server(uvicorn.Config(app, host=listen, port=port, log_level="info",
                                               access_log=False))
        log.info("serving the API on http://%s:%d (Ctrl-C to stop)", listen, port)
        await server.serve()
        if not server.started:
            raise ConfigError(f"could not listen on {listen}:{port}; is the port in use? "
                              "choose another with --port")
