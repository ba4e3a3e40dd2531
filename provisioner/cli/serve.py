"""`provisioner serve`: run the appliance (store, inventory, HTTP API) in the foreground."""

from __future__ import annotations

import typer

from provisioner.cli.common import state
from provisioner.errors import ValidationError


def serve(
    ctx: typer.Context,
    listen: str | None = typer.Option(None, "--listen", help="Address for the HTTP API."),
    port: int | None = typer.Option(None, "--port", help="Port for the HTTP API."),
    log_level: str = typer.Option("info", "--log-level", help="debug shows one line per DHCP "
                                  "packet and TFTP transfer; also info, warning, error."),
) -> None:
    """Run the appliance until interrupted (Ctrl-C or SIGTERM)."""
    from provisioner.service import run_service  # imports the web stack only when serving

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValidationError("--log-level", f"{log_level!r} is not debug, info, warning or error")
    settings = state(ctx).serving_settings
    run_service(settings, listen=listen or settings.api.listen, port=port or settings.api.port,
                log_level=level)
