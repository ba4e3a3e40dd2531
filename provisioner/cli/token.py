"""`provisioner token ...`: bearer tokens for the admin API (create, list, revoke).

A token is printed once, when it is created; the store keeps only its sha256.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from provisioner.cli.audit import local_who
from provisioner.cli.common import JSON_OPTION, print_json, print_table, with_store
from provisioner.security.audit import AuditLog
from provisioner.security.tokens import ApiToken, ApiTokens, Role
from provisioner.store.base import KeyValueStore

T = TypeVar("T")
app = typer.Typer(help="Bearer tokens for the admin API: create, list, revoke.",
                  no_args_is_help=True)


def _run(ctx: typer.Context, work: Callable[[ApiTokens], Awaitable[T]],
         audited: Callable[[T], tuple[str, str]] | None = None) -> T:
    """Run `work` on the target's store; `audited(result)` gives (action, target) to log."""

    async def run(store: KeyValueStore) -> T:
        result = await work(ApiTokens(store))
        if audited is not None:
            action, target = audited(result)
            await AuditLog(store).record(local_who(), action, target, "ok", time.time())
        return result

    return with_store(ctx, run, read=audited is None)


def _row(token: ApiToken) -> dict[str, object]:
    return {"id": token.id, "name": token.name, "role": token.role.label,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(token.created))}


@app.command("create")
def create(
    ctx: typer.Context,
    role: str = typer.Option(..., "--role", help="viewer (read), operator (nodes, power, "
                             "reimage) or admin (everything).", show_default=False),
    name: str = typer.Option("api", "--name", help="What the token is for (shown in the "
                             "audit log)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a token and print it once: store it now, it cannot be shown again."""
    wanted = Role.parse(role)
    token, secret = _run(ctx,
                         lambda tokens: tokens.create(wanted, name, time.time()),
                         lambda made: ("token.create", made[0].id))
    if as_json:
        print_json({**_row(token), "token": secret})
        return
    typer.echo(secret)
    typer.echo(f"created {token.role.label} token {token.id} ({token.name}); it is shown only "
               "this once", err=True)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List tokens (ids, names and roles; never the secrets)."""
    found = _run(ctx, lambda tokens: tokens.list())
    rows = [_row(t) for t in found]
    if as_json:
        print_json(rows)
        return
    print_table(["id", "name", "role", "created"],
                [[r["id"], r["name"], r["role"], r["created"]] for r in rows])


@app.command("revoke")
def revoke(ctx: typer.Context,
           token_id: str = typer.Argument(..., help="Token id (from `token list`).",
                                          show_default=False)) -> None:
    """Revoke a token; requests with it are refused from now on."""
    result = _run(ctx, lambda tokens: tokens.revoke(token_id),
                  lambda gone: ("token.revoke", gone.id))
    typer.echo(f"revoked token {result.id} ({result.name}, {result.role.label})")
