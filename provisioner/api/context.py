"""What the API routes work with, built once by service.py (or a test) and passed in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from provisioner.boot.binding import AddressBinding, Refusals
from provisioner.config import Settings
from provisioner.images.format.catalog import ImageCatalog
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.runtime.supervisor import Supervisor
from provisioner.security.audit import AuditLog
from provisioner.security.refusals import RefusalRecorder
from provisioner.security.tokens import ApiTokens, BootTokens

Counters = Callable[[], Mapping[str, Mapping[str, int]]]


@dataclass
class ApiContext:
    settings: Settings
    inventory: Inventory
    lifecycle: Lifecycle
    boot_tokens: BootTokens
    api_tokens: ApiTokens
    audit: AuditLog
    catalog: ImageCatalog
    counters: Counters | None = None
    clock: Callable[[], float] = field(default=time.time)
    #: who may call back for a node: its own address (the boot plane's binding); None in
    #: tests of the API alone, where there is no DHCP to bind to
    binding: AddressBinding | None = None
    #: the background tasks /healthz reports on; None in tests of the API alone
    supervisor: Supervisor | None = None
    #: why this head is fenced (ha/membership.py), for /healthz; None: it is a live member
    fenced: Callable[[], str | None] = field(default=lambda: None)
    #: refused callbacks, counted and logged once per source per minute (no store write)
    refusals: Refusals = field(init=False)
    #: refused tokens (API and boot callback) in the audit log, as a summary per source
    refused: RefusalRecorder = field(init=False)
    #: background work started by requests (rollouts), kept so it is not garbage-collected
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.refusals = Refusals(self.clock, plane="node")
        self.refused = RefusalRecorder(self.audit, self.clock)

    @classmethod
    def build(cls, settings: Settings, inventory: Inventory, *,
              lifecycle: Lifecycle | None = None, counters: Counters | None = None,
              clock: Callable[[], float] = time.time) -> ApiContext:
        """The usual wiring over one inventory (its store holds tokens and audit too)."""
        store = inventory.store
        return cls(settings, inventory,
                   lifecycle or Lifecycle(inventory, None, clock, settings.defaults),
                   BootTokens(store), ApiTokens(store), AuditLog(store),
                   ImageCatalog(settings.images_dir, settings.images.keep), counters, clock)
