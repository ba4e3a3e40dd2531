"""A head's entry in the store (`heads/<name>`): its name and the addresses it advertises, as
JSON. Read by every head (ha/membership.py) and by `provisioner heads`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from provisioner.errors import ValidationError

VERSION = 1


@dataclass(frozen=True, slots=True)
class HeadRecord:
    name: str
    server_id: str = ""
    boot_url: str = ""
    api_url: str = ""
    #: when the head joined (wall clock, seconds)
    since: float = 0.0


def encode_head(record: HeadRecord) -> bytes:
    return json.dumps({"v": VERSION, **asdict(record)}, sort_keys=True).encode()


def decode_head(data: bytes) -> HeadRecord:
    try:
        raw = json.loads(data)
        return HeadRecord(str(raw["name"]), str(raw.get("server_id", "")),
                          str(raw.get("boot_url", "")), str(raw.get("api_url", "")),
                          float(raw.get("since", 0.0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError("head", f"not a head record: {exc}") from None
