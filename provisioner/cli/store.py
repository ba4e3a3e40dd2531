"""`provisioner store status`: backend, location, revision, size, and whether it answers."""

from __future__ import annotations

import dataclasses
import time

import typer

from provisioner.cli.common import (
    JSON_OPTION,
    print_fields,
    print_json,
    state,
    store_missing,
    with_store,
)
from provisioner.store.base import KeyValueStore, StoreStatus

app = typer.Typer(help="The key-value store behind the inventory.", no_args_is_help=True)


@app.command("status")
def status(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Check that the store answers, and show its backend, revision and key count."""
    settings = state(ctx).settings

    async def run(store: KeyValueStore) -> tuple[StoreStatus, float]:
        started = time.perf_counter()
        result = await store.status()
        return result, time.perf_counter() - started

    if store_missing(state(ctx).target):  # say so, and create nothing
        result = StoreStatus("sqlite", str(settings.store_path), 0, 0,
                             "not created yet: nothing was added with these settings")
        elapsed = 0.0
    else:
        result, elapsed = with_store(ctx, run, read=True)
    if as_json:
        print_json({**dataclasses.asdict(result), "latency_ms": round(elapsed * 1000, 2),
                    "config": settings.source})
        return
    print_fields([("backend", result.backend), ("endpoint", result.endpoint),
                  ("revision", result.revision), ("keys", result.keys),
                  ("latency", f"{elapsed * 1000:.1f} ms"), ("detail", result.detail),
                  ("config", settings.source)])
