"""`provisioner serve`: run the appliance (store, inventory, HTTP API) in the foreground."""

from __future__ import annotations

import typer

from provisioner.cli.common import state


def serve(
    ctx: typer.Context,
    listen: str | None = typer.Option(None, "--listen", help="Address for the HTTP API."),
    port: int | None = typer.Option(None, "--port", help="Port for the HTTP API."),
) -> None:
    """Run the appliance until interrupted (Ctrl-C or SIGTERM)."""
    from provisioner.service import run_service  # imports the web stack only when serving

    settings = state(ctx).settings
    run_service(settings, listen=listen or settings.api.listen, port=port or settings.api.port)
