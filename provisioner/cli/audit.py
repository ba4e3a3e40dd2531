"""CLI changes in the audit log, and `provisioner audit` to read it.

The CLI on the head node opens the store directly, past the API and its token checks, so it
records its changes itself, as the API does: same actions ("node.update", "image.publish",
...), target and outcome, with who = `local:USER`. USER comes from the real uid through the
password database, not from $USER or $LOGNAME, which the caller chooses.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer

from provisioner.cli.common import JSON_OPTION, print_json, print_table, with_store
from provisioner.errors import ProvisionerError
from provisioner.inventory.repository import Inventory
from provisioner.security.audit import AuditEntry, AuditLog
from provisioner.store.base import KeyValueStore

T = TypeVar("T")
_ERROR_CHARS = 300  # an error's text in the entry's detail, cut to this
PAGE = 1000  # entries read per request by `provisioner audit`


def local_who() -> str:
    """`local:NAME` for the user running the CLI (`local:UID` when it has no passwd entry)."""
    uid = os.getuid()
    try:
        return f"local:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"local:{uid}"


@dataclass
class AdminChange:
    """What one CLI change records: the target may be learnt while acting (a node's MAC),
    and detail may grow (what a prune kept)."""

    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


async def record(store: KeyValueStore, change: AdminChange, outcome: str) -> None:
    await AuditLog(store).record(local_who(), change.action, change.target, outcome,
                                 time.time(), detail=change.detail)


def audited(ctx: typer.Context, change: AdminChange,
            act: Callable[[Inventory, AdminChange], Awaitable[T]]) -> T:
    """Run `act` on the target's store and record `change` as ok, or as failed with the
    error (which is raised again, for the CLI to print as one line)."""

    async def run(store: KeyValueStore) -> T:
        try:
            result = await act(Inventory(store), change)
        except ProvisionerError as exc:
            change.detail["error"] = str(exc)[:_ERROR_CHARS]
            await record(store, change, "failed")
            raise
        await record(store, change, "ok")
        return result

    return with_store(ctx, run)


def audited_many(ctx: typer.Context, changes: list[AdminChange],
                 act: Callable[[Inventory, AdminChange], Awaitable[T]]) -> list[T]:
    """`audited` for several targets in one store session (`node delete a b c`): one entry
    each; the first failure stops the rest, as it always did."""

    async def run(store: KeyValueStore) -> list[T]:
        inv, done = Inventory(store), []
        for change in changes:
            try:
                done.append(await act(inv, change))
            except ProvisionerError as exc:
                change.detail["error"] = str(exc)[:_ERROR_CHARS]
                await record(store, change, "failed")
                raise
            await record(store, change, "ok")
        return done

    return with_store(ctx, run)


def recorded(ctx: typer.Context, change: AdminChange, work: Callable[[], T]) -> T:
    """Run `work` (a change outside the store: the image catalog) and record it after, as
    ok, or as failed with the error (raised again)."""
    try:
        result = work()
    except ProvisionerError as exc:
        change.detail["error"] = str(exc)[:_ERROR_CHARS]
        with_store(ctx, lambda store: record(store, change, "failed"))
        raise
    with_store(ctx, lambda store: record(store, change, "ok"))
    return result


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _detail(detail: Mapping[str, Any]) -> str:
    text = " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", [], {}))
    return text if len(text) <= 100 else text[:97] + "..."


def audit(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=100_000,
                              help="How many entries, newest first."),
    every: bool = typer.Option(False, "--all", help="Every entry kept (see [retention])."),
    action: str | None = typer.Option(None, "--action", help="Only this action, e.g. "
                                      "node.update, image.prune, auth."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The audit log, newest first: API and CLI changes, refused requests, boot tokens."""

    async def read(store: KeyValueStore) -> list[AuditEntry]:
        log, cursor = AuditLog(store), ""
        found: list[AuditEntry] = []
        while True:  # a page at a time, so a long log is never one read
            want = PAGE if every else min(PAGE, limit - len(found))
            page, cursor = await log.page(limit=want, after=cursor, action=action)
            found.extend(page)
            if not cursor or (not every and len(found) >= limit):
                return found

    found = with_store(ctx, read, read=True)
    if as_json:
        print_json([e.to_dict() for e in found])
        return
    print_table(["time", "who", "action", "target", "outcome", "detail"],
                [[_when(e.at), e.who, e.action, e.target, e.outcome, _detail(e.detail)]
                 for e in found])
