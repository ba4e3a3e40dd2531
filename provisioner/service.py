"""Composition root: the store, the inventory, TFTP and the HTTP API on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time

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
from provisioner.tftp.sources import SourceResolver

log = logging.getLogger("provisioner")


def run_service(settings: Settings, *, listen: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(settings, listen, port))


def tftp_server(settings: Settings, inventory: Inventory) -> TftpServer:
    t = settings.tftp
    session = SessionConfig(max_blksize=t.max_blksize, mtu=t.mtu, timeout=t.timeout,
                            max_retries=t.max_retries, max_windowsize=t.max_windowsize)
    config = TftpServerConfig(listen=t.listen, port=t.port, max_transfers=t.max_transfers,
                              max_per_client=t.max_per_client, session=session)
    settings.tftp_root.mkdir(parents=True, exist_ok=True)
    recorder = _TransferRecorder(inventory)
    return TftpServer(SourceResolver(settings.tftp_root), config, recorder)


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


async def _start_boot_plane(settings: Settings) -> BootHttpServer:
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    boot = BootHttpServer(settings.images_dir, max_connections=settings.boot.max_connections)
    try:
        await boot.start(settings.boot.listen, settings.boot.port)
    except OSError as exc:
        raise ConfigError(f"boot http: cannot listen on {settings.boot.listen}:"
                          f"{settings.boot.port}: {exc.strerror}; set [boot] listen/port") from None
    return boot


async def _serve(settings: Settings, listen: str, port: int) -> None:
    store = open_store(settings)
    inventory = Inventory(store)
    tftp: TftpServer | None = None
    boot: BootHttpServer | None = None
    dhcp: DhcpServer | None = None
    try:
        await inventory.start()
        status = await store.status()
        log.info("store %s at %s, revision %d, %d keys", status.backend, status.endpoint,
                 status.revision, status.keys)
        if settings.tftp.enabled:
            tftp = tftp_server(settings, inventory)
            try:
                await tftp.start()
            except OSError as exc:
                raise ConfigError(f"tftp: cannot listen on {settings.tftp.listen}:"
                                  f"{settings.tftp.port}: {exc.strerror}; set [tftp] listen/port "
                                  "or enabled = false") from None
        boot = await _start_boot_plane(settings)
        if settings.dhcp.mode != "off":
            dhcp = DhcpServer(settings.dhcp, inventory, boot_port=settings.boot.port,
                              defaults=dict(settings.defaults))
            try:
                await dhcp.start()
            except OSError as exc:
                raise ConfigError(f"dhcp: cannot listen on {settings.dhcp.interface or 'any'} "
                                  f"port {settings.dhcp.port}: {exc.strerror}; check [dhcp] "
                                  "interface and that no other DHCP server runs here") from None
        config = uvicorn.Config(create_app(inventory), host=listen, port=port, log_level="info",
                                access_log=False)
        server = uvicorn.Server(config)
        log.info("serving the API on http://%s:%d (Ctrl-C to stop)", listen, port)
        await server.serve()
        if not server.started:
            raise ConfigError(f"could not listen on {listen}:{port}; is the port in use? "
                              "choose another with --port")
    finally:
        if dhcp is not None:
            await dhcp.close()
        if boot is not None:
            await boot.close()
        if tftp is not None:
            await tftp.close()
        await inventory.stop()
        await store.close()
