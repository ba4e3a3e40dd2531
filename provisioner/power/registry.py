"""Which driver a node's power_driver setting names, and the one way to open it.

base.py defines what a driver is; the drivers import base; this module imports the drivers.
Nothing imports it back, so base and the drivers stay free of import cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from provisioner.errors import PowerError
from provisioner.nodes.model import SettingValue
from provisioner.power.base import DEFAULT_TIMEOUT, OpenableDriver, PowerDriver, PowerTarget
from provisioner.power.ipmi import IpmiDriver
from provisioner.power.manual import ManualDriver
from provisioner.power.qemu import QemuDriver
from provisioner.power.redfish import RedfishDriver

#: power_driver value -> driver class; model.SETTINGS["power_driver"].choices names the same.
DRIVERS: Final[Mapping[str, type[OpenableDriver]]] = MappingProxyType({
    driver.kind: driver for driver in (IpmiDriver, RedfishDriver, QemuDriver, ManualDriver)
})


def open_power(settings: Mapping[str, SettingValue], *, node: str = "-",
               timeout: float = DEFAULT_TIMEOUT,
               notify: Callable[[str], None] | None = None) -> PowerDriver:
    """The driver a node's effective settings (model.effective_values) ask for. `node` is used
    in messages only; `notify` receives the manual driver's instructions (default: logged).

    A power_password given as "file:PATH" or "env:NAME" is read here, on every open (so a
    changed file or variable applies at once; a missing one fails this call with PowerError,
    not the storing of the setting)."""
    kind = str(settings.get("power_driver", "") or "").strip()
    known = ", ".join(sorted(DRIVERS))
    if not kind:
        raise PowerError(f"node {node} has no power_driver setting; set one of {known} on the "
                         "node or its group (--set power_driver=...)")
    driver = DRIVERS.get(kind)
    if driver is None:
        raise PowerError(f"node {node}: unknown power_driver {kind!r}; known drivers: {known}")
    return driver.from_target(PowerTarget.read(settings, node=node, timeout=timeout,
                                               notify=notify))
