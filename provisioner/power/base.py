"""What every power driver offers, and the settings it is opened with.

A driver is opened (power.registry.open_power) from a node's *effective* settings (defaults,
groups, node):

    power_driver    ipmi | redfish | qemu | manual
    power_address   BMC host[:port], Redfish URL, or QMP unix socket path
    power_user      BMC user name
    power_password  BMC password (a secret: never shown, logged or put in an error), or where
                    to read it when the driver opens: "file:/etc/provisioner/bmc.pass" (a file
                    only its owner may read, as ssh demands of keys) or "env:BMC_PASSWORD" (a
                    variable of the process that opens the driver: appliance, CLI, scheduler)
    power_tls_verify  Redfish only: "true" (default), "false" (self-signed BMC), or a CA file

The password is held in a `Secret`, whose str() and repr() are the redaction mark, so a driver
can be logged or printed without leaking it.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from provisioner.errors import PowerError
from provisioner.nodes.model import ENV_REFERENCE, FILE_REFERENCE, REDACTED, SettingValue
from provisioner.security.secretfile import read_secret_text

DEFAULT_TIMEOUT: Final = 10.0


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerAction(enum.StrEnum):
    """What `node power` and the API accept."""

    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    SOFT_OFF = "soft-off"
    STATUS = "status"


class Secret:
    """A string that does not show itself: str() and repr() give the redaction mark."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"


class PowerDriver(Protocol):
    """Power control of one node. Every method raises PowerError saying what to check."""

    kind: str

    async def status(self) -> PowerState: ...

    async def on(self) -> None: ...

    async def off(self) -> None:
        """Hard off: the machine stops at once."""

    async def cycle(self) -> None:
        """Hard reset; a machine that is off is powered on. It boots afresh either way."""

    async def soft_off(self) -> None:
        """Ask the operating system to shut down (ACPI power button)."""


@runtime_checkable
class OneTimeBoot(Protocol):
    """A driver that can make the next boot (only) a network boot: BMCs of nodes that would
    otherwise boot from a local disk. A rollout calls it before the power-cycle."""

    async def boot_pxe_once(self) -> None: ...


def scrub(text: str, secret: Secret | None) -> str:
    """`text` with the secret's value replaced: for tool output that may echo it back."""
    if secret is None or not secret:
        return text
    return text.replace(secret.reveal(), REDACTED)


@dataclass(frozen=True)
class PowerTarget:
    """The node's power control as its power_* settings describe it, read once and typed:
    what a driver is opened with."""

    node: str  # for messages only
    address: str = ""
    user: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    verify: bool | str = True  # Redfish TLS: verify, don't (self-signed BMC), or a CA file
    timeout: float = DEFAULT_TIMEOUT
    notify: Callable[[str], None] | None = None  # where the manual driver's instructions go
    insecure: bool = False  # power_insecure: Redfish over plain http:// allowed

    @classmethod
    def read(cls, settings: Mapping[str, SettingValue], *, node: str = "-",
             timeout: float = DEFAULT_TIMEOUT,
             notify: Callable[[str], None] | None = None) -> PowerTarget:
        return cls(node, _text(settings, "power_address"), _text(settings, "power_user"),
                   resolve_password(_text(settings, "power_password"), node), _verify(settings),
                   timeout, notify, settings.get("power_insecure") is True)

    def required_address(self, kind: str) -> str:
        if not self.address:
            raise PowerError(f"node {self.node} has power_driver={kind} but no power_address; "
                             "set the BMC address, Redfish URL or QMP socket path")
        return self.address


class OpenableDriver(PowerDriver, Protocol):
    """A driver as power.registry.DRIVERS holds it (by class): opened from a PowerTarget."""

    @classmethod
    def from_target(cls, target: PowerTarget) -> OpenableDriver: ...


def resolve_password(value: str, node: str) -> Secret:
    """power_password as set: the password itself, or read now from the file or environment
    variable it names (model.FILE_REFERENCE, ENV_REFERENCE). PowerError says what to fix."""
    if value.startswith(FILE_REFERENCE):
        path = Path(value[len(FILE_REFERENCE):])
        return Secret(read_secret_text(path, f"node {node}: power_password file", PowerError))
    if value.startswith(ENV_REFERENCE):
        name = value[len(ENV_REFERENCE):]
        found = os.environ.get(name)
        if not found:
            raise PowerError(f"node {node}: power_password names the environment variable "
                             f"{name}, which is {'empty' if found == '' else 'not set'} here; "
                             "set it for the appliance (e.g. EnvironmentFile= in its systemd "
                             "unit) and for the CLI, or change power_password")
        return Secret(found)
    return Secret(value)


def _text(settings: Mapping[str, SettingValue], key: str) -> str:
    value = settings.get(key, "")
    return str(value).strip() if value is not None else ""


def _verify(settings: Mapping[str, SettingValue]) -> bool | str:
    raw = settings.get("power_tls_verify", True)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    if text.lower() in {"", "true", "yes", "1"}:
        return True
    if text.lower() in {"false", "no", "0"}:
        return False
    return text  # a CA bundle path


async def wait_for_state(driver: PowerDriver, want: PowerState, *, timeout: float,
                         interval: float = 0.5) -> PowerState:
    """Poll `status()` until it is `want`; BMCs apply changes seconds after accepting them."""
    deadline = time.monotonic() + timeout
    state = await driver.status()
    while state is not want:
        if time.monotonic() >= deadline:
            raise PowerError(f"{driver!r} is still {state} after {timeout:.0f} s "
                             f"(wanted {want}); check the BMC and the machine")
        await asyncio.sleep(interval)
        state = await driver.status()
    return state


async def power_action(driver: PowerDriver, action: PowerAction | str) -> PowerState:
    """Run one action and return the state read afterwards (for the CLI and the API)."""
    act = PowerAction(action)
    if act is PowerAction.ON:
        await driver.on()
    elif act is PowerAction.OFF:
        await driver.off()
    elif act is PowerAction.CYCLE:
        await driver.cycle()
    elif act is PowerAction.SOFT_OFF:
        await driver.soft_off()
    return await driver.status()
