"""The domain model: frozen, validated, pure values.

Rules of this file: no I/O, no clocks (timestamps come in as arguments), no third-party imports.
Every constructor validates; a refused value raises `ValidationError` naming the field and the
rule, so the CLI and the API can show it as it is.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, TypeVar

from provisioner.errors import ValidationError

SettingValue = str | int | bool
E = TypeVar("E", bound=enum.StrEnum)

_HEX12: Final = re.compile(r"[0-9a-f]{12}")
# RFC 1123 section 2.1: a label is 1-63 letters, digits and hyphens, not starting or ending with
# a hyphen (a leading digit is allowed, unlike RFC 952).
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_SETTING_KEY: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, order=True, slots=True)
class MacAddress:
    """An Ethernet MAC address in canonical form `aa:bb:cc:dd:ee:ff`.

    Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff` (Cisco) and bare hex.
    """

    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", canonical_mac(self.value))

    @classmethod
    def from_bytes(cls, raw: bytes) -> MacAddress:
        if len(raw) != 6:
            raise ValidationError("mac", f"needs 6 bytes, got {len(raw)}")
        return cls(raw.hex())

    @property
    def packed(self) -> bytes:
        return bytes.fromhex(self.value.replace(":", ""))

    @property
    def dashed(self) -> str:
        """The form PXELINUX uses in `pxelinux.cfg/01-aa-bb-...`."""
        return self.value.replace(":", "-")

    def __str__(self) -> str:
        return self.value


def canonical_mac(text: str) -> str:
    """Return the canonical `aa:bb:cc:dd:ee:ff` form of a MAC, or raise ValidationError."""
    raw = text.strip().lower()
    if re.fullmatch(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}", raw):
        digits = raw.replace(":", "").replace("-", "")
    elif re.fullmatch(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}", raw):
        digits = raw.replace(".", "")
    elif _HEX12.fullmatch(raw):
        digits = raw
    else:
        raise ValidationError(
            "mac",
            f"{text!r} is not a MAC address; use aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF "
            "or aabb.ccdd.eeff",
        )
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def check_hostname(name: str, field_name: str = "name") -> str:
    """Validate a node name: one RFC 1123 label, stored lower case."""
    lowered = name.lower()
    if not _LABEL.fullmatch(lowered):
        raise ValidationError(
            field_name,
            f"{name!r} is not a valid host name: 1-63 letters, digits or '-', "
            "not starting or ending with '-' (RFC 1123)",
        )
    return lowered


def check_name(name: str, field_name: str) -> str:
    """Validate a group or image name: lower case, starts with a letter, at most 63 chars."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            field_name,
            f"{name!r} is not a valid name: a lower-case letter, then letters, digits, "
            "'_', '.' or '-', at most 63 characters",
        )
    return name


def check_ipv4(value: str | ipaddress.IPv4Address, field_name: str = "ip") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidationError(field_name, f"{value!r} is not an IPv4 address") from None


class Firmware(enum.StrEnum):
    """How a node boots, as told by DHCP options 93/60/77 (RFC 4578, iPXE)."""

    UNKNOWN = "unknown"
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_ARM64 = "uefi-arm64"
    UEFI_HTTP = "uefi-http"
    IPXE = "ipxe"


class NodeState(enum.StrEnum):
    DISCOVERED = "discovered"
    REGISTERED = "registered"
    PROVISIONING = "provisioning"
    BOOTED = "booted"
    READY = "ready"
    DRAINING = "draining"
    REIMAGING = "reimaging"
    FAILED = "failed"
    RETIRED = "retired"


class NodeEvent(enum.StrEnum):
    """What happens to a node; lifecycle.TRANSITIONS says which state each moves it to."""

    REGISTER = "register"  # an operator accepts, resets or brings back a node
    BOOT_SCRIPT_SERVED = "boot_script_served"  # the iPXE route served its script
    INIT_STARTED = "init_started"  # the image's /init is up and hands over to its own init
    CALLBACK = "callback"  # the booted image called back
    HANDED_OFF = "handed_off"  # the scheduler confirmed it (or handoff is off)
    DRAIN = "drain"  # taken out of the scheduler, e.g. before a reimage
    RESUME = "resume"  # back to ready without a reboot (a reimage skipped it)
    REIMAGE = "reimage"  # a reimage takes it
    FAIL = "fail"  # no callback in time, a render or power error, an operator
    RETIRE = "retire"  # out of service


def parse_enum(kind: type[E], value: str, field_name: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ValidationError(field_name, f"{value!r} is not one of: {allowed}") from None


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One known setting: its type, whether it is a secret, and what it means."""

    kind: type
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()


#: Settings a group or a node may carry. Unknown keys are refused: a typo must not be silent.
SETTINGS: Final[Mapping[str, SettingSpec]] = MappingProxyType(
    {
        "image": SettingSpec(str, "image NAME or NAME:VERSION the node boots"),
        "kernel_args": SettingSpec(str, "extra kernel command line arguments"),
        "bootfile": SettingSpec(str, "boot file override for the first DHCP stage"),
        "ipxe_script": SettingSpec(str, "iPXE template under templates/ipxe/"),
        "console": SettingSpec(str, "serial console, e.g. ttyS0,115200"),
        "power_driver": SettingSpec(
            str, "how to power-cycle", choices=("ipmi", "redfish", "qemu", "manual")
        ),
        "power_address": SettingSpec(str, "BMC address, Redfish URL or QMP socket path"),
        "power_user": SettingSpec(str, "BMC user name"),
        "power_password": SettingSpec(str, "BMC password", secret=True),
        "power_tls_verify": SettingSpec(str, "Redfish TLS: true, false (self-signed) or CA file"),
        "power_insecure": SettingSpec(bool, "allow Redfish over plain http:// (the BMC password "
                                      "then crosses the network in clear)"),
        "scheduler_partition": SettingSpec(str, "partition the node joins in the scheduler"),
        "scheduler_features": SettingSpec(str, "comma-separated features for the scheduler"),
        "callback_timeout": SettingSpec(int, "seconds to wait for the boot callback"),
        "discovery": SettingSpec(bool, "add unknown MACs on this segment as discovered nodes"),
    }
)
REDACTED: Final = "********"
#: A secret setting may name where its value is instead of holding it; power/base.py reads it
#: when the driver opens. "file:/etc/provisioner/bmc.pass" or "env:BMC_PASSWORD".
FILE_REFERENCE: Final = "file:"
ENV_REFERENCE: Final = "env:"
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Settings that land in an iPXE script, a kernel command line or a kickstart (templates/ipxe,
#: templates/kickstart), and the characters each may hold: a newline would add a script line,
#: `${..}` is iPXE expansion, a quote ends the kickstart's --append="...", `;` `&` `|` `#`
#: and `\` mean something to a shell or a parser on the way.
_LINE_SAFE: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({
    "console": (r"A-Za-z0-9_.,:-", "letters, digits and _ . , : -"),
    "kernel_args": (r"A-Za-z0-9_.,:=/+@% -", "letters, digits, spaces and _ . , : = / + @ % -"),
    "bootfile": (r"A-Za-z0-9_./-", "letters, digits and _ . / -"),
    "ipxe_script": (r"A-Za-z0-9_./-", "letters, digits and _ . / -"),
    "image": (r"a-z0-9_.:-", "lower-case letters, digits and _ . : -"),
    "scheduler_partition": (r"A-Za-z0-9_.-", "letters, digits and _ . -"),
    "scheduler_features": (r"A-Za-z0-9_., -", "letters, digits, spaces and _ . , -"),
})
_LINE_SAFE_RE: Final = {k: re.compile(f"[{chars}]*") for k, (chars, _) in _LINE_SAFE.items()}
_LINE_MAX: Final = 1024  # a kernel command line is 2048 bytes on x86 in all; leave room


def check_setting(key: str, value: object) -> SettingValue:
    """Validate one setting and coerce strings from the CLI ("8", "true") to the declared type."""
    spec = SETTINGS.get(key)
    if spec is None:
        known = ", ".join(sorted(SETTINGS))
        raise ValidationError(f"settings.{key}", f"unknown setting; known settings: {known}")
    if spec.secret:
        return _check_secret(key, value)
    coerced = _coerce(key, spec.kind, value)
    if isinstance(coerced, str):
        _check_line(key, coerced)
    if spec.choices and coerced not in spec.choices:
        allowed = ", ".join(spec.choices)
        raise ValidationError(f"settings.{key}", f"{value!r} is not one of: {allowed}")
    return coerced


def _check_secret(key: str, value: object) -> str:
    """A secret is a string; a reference must be well formed. Messages never show the value."""
    if not isinstance(value, str):
        raise ValidationError(f"settings.{key}", f"must be a string, not {type(value).__name__} "
                              "(the value is a secret and is not shown)")
    if value.startswith(FILE_REFERENCE) and not value[len(FILE_REFERENCE):].startswith("/"):
        raise ValidationError(f"settings.{key}", "a file reference needs an absolute "
                              "path, e.g. file:/etc/provisioner/bmc.pass")
    if value.startswith(ENV_REFERENCE):
        name = value[len(ENV_REFERENCE):]
        if not _ENV_NAME.fullmatch(name):
            raise ValidationError(f"settings.{key}", "an environment reference needs a "
                                  "variable name, e.g. env:BMC_PASSWORD")
        if name.startswith("PROVISIONER_"):
            raise ValidationError(f"settings.{key}", "PROVISIONER_* variables are the "
                                  "appliance's own settings and secrets; use another name")
    _check_line(key, value)  # names the offending character only, never the value
    return value


def _coerce(key: str, kind: type, value: object) -> SettingValue:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
            return value.lower() in {"true", "yes", "1"}
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
            return int(value)
    elif isinstance(value, str):
        return value
    raise ValidationError(f"settings.{key}", f"{value!r} is not a {kind.__name__}")


def _check_line(key: str, value: str) -> None:
    """One line, and for the settings in _LINE_SAFE only their characters: refused at the door,
    so no template has to trust a value to stay on its line."""
    safe = _LINE_SAFE_RE.get(key)
    bad = next((c for c in value if not c.isprintable()), None) if safe is None else \
        next((c for c in value if not safe.fullmatch(c)), None)
    if bad is not None:
        allowed = _LINE_SAFE[key][1] if key in _LINE_SAFE else "printable characters on one line"
        raise ValidationError(f"settings.{key}", f"character {bad!r} is not allowed in {key} "
                              f"(allowed: {allowed})")
    if len(value) > _LINE_MAX:
        raise ValidationError(f"settings.{key}", f"{len(value)} characters; at most {_LINE_MAX}")


def check_power(values: Mapping[str, SettingValue]) -> None:
    """Refuse Redfish over plain http:// unless `power_insecure` says so: the driver sends the
    BMC password with every request (basic auth), readable by anyone on the path."""
    driver = str(values.get("power_driver", "") or "").strip()
    address = str(values.get("power_address", "") or "").strip().lower()
    if driver == "redfish" and address.startswith("http://") \
            and values.get("power_insecure") is not True:
        raise ValidationError("settings.power_address",
                              "redfish over http:// sends the BMC password in clear; use "
                              "https:// or set power_insecure=true on the node or its group")


def check_settings(settings: Mapping[str, object]) -> Mapping[str, SettingValue]:
    checked = {key: check_setting(key, value) for key, value in settings.items()}
    return MappingProxyType(dict(sorted(checked.items())))


def redact(settings: Mapping[str, SettingValue]) -> dict[str, SettingValue]:
    """Settings as they may be shown: secrets replaced, never logged or returned by the API."""
    return {k: (REDACTED if SETTINGS[k].secret else v) for k, v in settings.items()}


@dataclass(frozen=True, slots=True)
class Group:
    """A named set of settings. A node's effective settings are: defaults, then its groups in
    order, then the node itself (later wins)."""

    name: str
    settings: Mapping[str, SettingValue] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_name(self.name, "group"))
        object.__setattr__(self, "settings", check_settings(self.settings))


@dataclass(frozen=True, slots=True)
class Node:
    """A compute node, keyed by the MAC of its provisioning interface."""

    mac: MacAddress
    name: str
    ip: ipaddress.IPv4Address | None = None
    groups: tuple[str, ...] = ()
    image: str | None = None
    firmware: Firmware = Firmware.UNKNOWN
    state: NodeState = NodeState.REGISTERED
    settings: Mapping[str, SettingValue] = field(default_factory=dict)
    hardware: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_hostname(self.name))
        if self.ip is not None:
            object.__setattr__(self, "ip", check_ipv4(self.ip))
        groups = tuple(check_name(g, "groups") for g in self.groups)
        if len(set(groups)) != len(groups):
            raise ValidationError("groups", "a group may be listed only once")
        object.__setattr__(self, "groups", groups)
        if self.image is not None:
            check_setting("image", self.image)
        object.__setattr__(self, "settings", check_settings(self.settings))
        object.__setattr__(self, "hardware", MappingProxyType(dict(self.hardware)))

    def with_changes(self, **changes: Any) -> Node:
        """A copy with fields replaced, validated again."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Effective:
    """One resolved setting and where it came from: "default", "group:NAME" or "node"."""

    value: SettingValue
    source: str


def effective_settings(
    node: Node, groups: Mapping[str, Group], defaults: Mapping[str, SettingValue]
) -> dict[str, Effective]:
    """Resolve defaults <- groups in the node's order <- the node. A missing group is skipped:
    deleting a group must not make its members unbootable.

    The one place settings are layered: everything that needs a node's settings (DHCP, the boot
    routes, templates, power drivers, the handoff ticket, the CLI and the API) comes here,
    through `effective_values` when it needs no sources."""
    layers: list[tuple[str, Mapping[str, SettingValue]]] = [("default", defaults)]
    layers += [(f"group:{g}", groups[g].settings) for g in node.groups if g in groups]
    own = dict(node.settings)
    if node.image is not None:
        own["image"] = node.image
    layers.append(("node", own))
    resolved: dict[str, Effective] = {}
    for source, values in layers:
        for key, value in values.items():
            resolved[key] = Effective(value, source)
    return dict(sorted(resolved.items()))


def setting_values(resolved: Mapping[str, Effective]) -> dict[str, SettingValue]:
    """Resolved settings without where each came from."""
    return {key: effective.value for key, effective in resolved.items()}


def effective_values(
    node: Node, groups: Mapping[str, Group], defaults: Mapping[str, SettingValue]
) -> dict[str, SettingValue]:
    """`effective_settings` as plain values: what DHCP, templates and drivers read."""
    return setting_values(effective_settings(node, groups, defaults))


@dataclass(frozen=True, slots=True)
class Lease:
    """An address bound to a client. `expires` is seconds since the epoch."""

    ip: ipaddress.IPv4Address
    mac: MacAddress
    expires: float
    hostname: str | None = None
    client_id: str | None = None
    state: str = "bound"  # "offered", "bound", "declined" (quarantined), "released"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", check_ipv4(self.ip))
        if self.state not in {"offered", "bound", "declined", "released"}:
            raise ValidationError("state", f"{self.state!r} is not a lease state")

    def active(self, now: float) -> bool:
        return self.state in {"offered", "bound", "declined"} and self.expires > now


@dataclass(frozen=True, slots=True)
class BootEvent:
    """One step on a node's timeline: DHCP offered, file served, booted, handed off, ready."""

    mac: MacAddress
    kind: str
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.kind):
            raise ValidationError("kind", f"{self.kind!r} is not an event kind (snake_case)")
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
