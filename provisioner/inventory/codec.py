"""The storage encoding of the inventory's records: the bytes under keys.py's keys.

This is not the wire schema. The API's and the CLI's JSON are built in api/schemas.py and
cli/, from the domain values, never from these functions: renaming a field there changes no
stored byte, and a change here is a data-format change, made by bumping FORMAT and teaching
`decode_*` to read the previous format.

Every record is a compact JSON object with sorted keys carrying `"format": FORMAT`. A record
of another format is refused with `UnknownFormat`, never guessed at: it was written by another
version of provisioner. Records written before the format field existed have no `format`
and the same fields as format 1, so a missing field reads as format 1.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from provisioner.errors import StoreError, ValidationError
from provisioner.nodes.model import (
    BootEvent,
    Firmware,
    Group,
    Lease,
    MacAddress,
    Node,
    NodeState,
    parse_enum,
)

#: the format this version writes and the only one it reads
FORMAT: Final = 1
_LEGACY: Final = 1  # what a record without the field is (written before it existed)


class RecordError(StoreError):
    """A stored record could not be read; the message names the record and what is wrong."""


class UnknownFormat(RecordError):
    """A stored record has a format this version of provisioner does not read."""

    def __init__(self, kind: str, found: object) -> None:
        self.kind, self.found = kind, found
        super().__init__(f"the stored {kind} record has format {found!r}, and this version of "
                         f"provisioner reads format {FORMAT} only: it was written by another "
                         "version; run that version (or a newer one), or restore the store "
                         "from a backup")


def dump(data: Mapping[str, Any]) -> bytes:
    """`data` and the format, as stored: compact JSON with sorted keys."""
    return json.dumps({**data, "format": FORMAT}, separators=(",", ":"),
                      sort_keys=True).encode()


def load(raw: bytes, kind: str) -> dict[str, Any]:
    """The fields of a stored record of `kind`, once its format is checked."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"the stored {kind} record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(f"the stored {kind} record is not a JSON object")
    found = data.pop("format", _LEGACY)
    if found != FORMAT or isinstance(found, bool):
        raise UnknownFormat(kind, found)
    return data


def _unreadable(kind: str, exc: Exception) -> RecordError:
    what = f"lacks the field {exc}" if isinstance(exc, KeyError) else str(exc)
    return RecordError(f"the stored {kind} record {what}")


# -- nodes -------------------------------------------------------------------------------


def encode_node(node: Node) -> bytes:
    return dump({
        "mac": node.mac.value, "name": node.name, "ip": str(node.ip) if node.ip else None,
        "groups": list(node.groups), "image": node.image, "firmware": node.firmware.value,
        "state": node.state.value, "settings": dict(node.settings), "hardware": dict(node.hardware),
    })


def decode_node(raw: bytes) -> Node:
    data = load(raw, "node")
    try:
        return Node(
            mac=MacAddress(data["mac"]), name=data["name"], ip=data.get("ip"),
            groups=tuple(data.get("groups", ())), image=data.get("image"),
            firmware=parse_enum(Firmware, data.get("firmware", "unknown"), "firmware"),
            state=parse_enum(NodeState, data.get("state", "registered"), "state"),
            settings=data.get("settings", {}), hardware=data.get("hardware", {}),
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise _unreadable("node", exc) from None


def node_name(raw: bytes) -> str | None:
    """Just the name of a stored node (None when unreadable): enough to check a claim."""
    try:
        name = load(raw, "node").get("name")
    except RecordError:
        return None
    return name if isinstance(name, str) else None


# -- groups ------------------------------------------------------------------------------


def encode_group(group: Group) -> bytes:
    return dump({"name": group.name, "settings": dict(group.settings),
                 "description": group.description})


def decode_group(raw: bytes) -> Group:
    data = load(raw, "group")
    try:
        return Group(data["name"], data.get("settings", {}), data.get("description", ""))
    except (KeyError, TypeError, ValidationError) as exc:
        raise _unreadable("group", exc) from None


# -- leases ------------------------------------------------------------------------------


def encode_lease(lease: Lease) -> bytes:
    """What `dump` makes of a lease, written out directly for the DHCP bind path: json.dumps
    with sort_keys costs 7 us a lease. Falls back to `dump` for unusual values."""
    expires = lease.expires
    if type(expires) not in (int, float) or not math.isfinite(expires):
        return dump(_lease_fields(lease))
    return (f'{{"client_id":{_text(lease.client_id)},"expires":{expires!r},'
            f'"format":{FORMAT},"hostname":{_text(lease.hostname)},"ip":"{lease.ip}",'
            f'"mac":"{lease.mac.value}","state":"{lease.state}"}}').encode()


def _lease_fields(lease: Lease) -> dict[str, Any]:
    return {"ip": str(lease.ip), "mac": lease.mac.value, "expires": lease.expires,
            "hostname": lease.hostname, "client_id": lease.client_id, "state": lease.state}


def _text(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def decode_lease(raw: bytes) -> Lease:
    data = load(raw, "lease")
    try:
        return Lease(ipaddress.IPv4Address(data["ip"]), MacAddress(data["mac"]),
                     data["expires"], data.get("hostname"), data.get("client_id"),
                     data.get("state", "bound"))
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise _unreadable("lease", exc) from None


# -- events ------------------------------------------------------------------------------


def encode_event(event: BootEvent) -> bytes:
    return dump({"mac": event.mac.value, "kind": event.kind, "at": event.at,
                 "detail": dict(event.detail)})


def decode_event(raw: bytes) -> BootEvent:
    data = load(raw, "event")
    try:
        return BootEvent(MacAddress(data["mac"]), data["kind"], data["at"],
                         data.get("detail", {}))
    except (KeyError, TypeError, ValidationError) as exc:
        raise _unreadable("event", exc) from None


# -- name claims -------------------------------------------------------------------------


def encode_claim(mac: MacAddress, at: float) -> bytes:
    """A name claim: the owner's MAC and when it was claimed (seconds since the epoch)."""
    return dump({"mac": mac.value, "at": at})


def decode_claim(raw: bytes) -> tuple[str, float]:
    """(owner MAC, claimed at). Claims from before the format field were the text
    "MAC AT"; those read as format 1 too."""
    if not raw.startswith(b"{"):
        mac, _, at = raw.decode(errors="replace").partition(" ")
        try:
            return mac, float(at)
        except ValueError:
            return mac, 0.0
    data = load(raw, "name claim")
    at = data.get("at", 0.0)
    return str(data.get("mac", "")), float(at) if isinstance(at, int | float) else 0.0
