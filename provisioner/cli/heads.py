"""`provisioner heads`: the live head nodes on the store, each with its share of the DHCP
clients (buckets out of 256, ha/buckets.py) and the addresses it advertises ([ha] settings).

The share is computed here from the live set as every head computes it, so it is what the
heads themselves use as long as their watches are current. `head_rows` also takes what each
head runs once for all the heads (`held`, by head name): a column shown only when some head
holds something.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from provisioner.cli.common import JSON_OPTION, print_json, print_table, with_store
from provisioner.errors import ProvisionerError
from provisioner.ha.buckets import BUCKETS, assign, shares
from provisioner.ha.election import leaders
from provisioner.ha.records import HeadRecord, decode_head
from provisioner.inventory import keys
from provisioner.store.base import KeyValueStore


async def live_heads(store: KeyValueStore) -> list[HeadRecord]:
    """The heads in the store now, by name; an unreadable entry is skipped."""
    found = []
    for kv in (await store.range(keys.HEADS)).items:
        try:
            found.append(decode_head(kv.value))
        except ProvisionerError:
            continue
    return sorted(found, key=lambda h: h.name)


def head_rows(heads: Sequence[HeadRecord], now: float,
              held: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One row per head: its buckets (count and percent), its addresses, how long it has been
    live, and (when `held` names any) what it holds."""
    counts = shares(assign(h.name for h in heads))
    rows = []
    for head in heads:
        row: dict[str, Any] = {
            "name": head.name, "buckets": counts.get(head.name, 0),
            "share": round(100 * counts.get(head.name, 0) / BUCKETS, 1),
            "server_id": head.server_id, "boot_url": head.boot_url, "api_url": head.api_url,
            "up_seconds": round(max(0.0, now - head.since)) if head.since else None}
        if held:
            row["holds"] = sorted(held.get(head.name, ()))
        rows.append(row)
    return rows


async def held_by_head(store: KeyValueStore) -> dict[str, list[str]]:
    """The elections each head leads (`singletons`: the work that must happen once), by head
    name: the first part of the leader's candidate id."""
    held: dict[str, list[str]] = {}
    for election, candidate in (await leaders(store)).items():
        held.setdefault(candidate.split(":", 1)[0], []).append(election)
    return held


async def _read(store: KeyValueStore) -> tuple[list[HeadRecord], dict[str, list[str]]]:
    return await live_heads(store), await held_by_head(store)


def heads(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List the live head nodes, their share of the DHCP clients, their addresses and the
    once-only work each leads."""
    live, held = with_store(ctx, _read, read=True)
    rows = head_rows(live, time.time(), held)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no live head: no `provisioner serve` is running on this store")
        return
    columns = ["name", "buckets", "share", "server_id", "boot_url", "api_url", "up_seconds"]
    if any("holds" in row for row in rows):
        columns.append("holds")
    table = [[_cell(column, row.get(column)) for column in columns] for row in rows]
    print_table(["name", "buckets", "share", "dhcp server", "boot url", "api url", "up",
                 "holds"][:len(columns)], table)


def _cell(column: str, value: object) -> object:
    if column == "share":
        return f"{value}%"
    if column == "up_seconds" and isinstance(value, int):
        return f"{value}s"
    if column == "holds" and isinstance(value, list):
        return ",".join(value) or "-"
    return value
