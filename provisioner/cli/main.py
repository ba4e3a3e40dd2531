"""Entry point: `provisioner` and `python -m provisioner`.

Errors are translated here, once: a ProvisionerError becomes one line on stderr and its exit code
(see errors.py); a KeyboardInterrupt exits 130. Tracebacks are for bugs only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from provisioner import __version__
from provisioner.cli import audit, group, heads, image, node, serve, status, store
from provisioner.cli import lab as lab_cli
from provisioner.cli import scheduler as scheduler_cli
from provisioner.cli import token as token_cli
from provisioner.cli.common import CliState
from provisioner.errors import ProvisionerError


class _TranslatingGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:  # click.Context; typer vendors its own click
        try:
            return super().invoke(ctx)
        except ProvisionerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_TranslatingGroup,
    name="provisioner",
    help="Bare-metal provisioning for HPC clusters: DHCP, TFTP, diskless images, "
    "scheduler handoff.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(node.app, name="node")
app.add_typer(group.app, name="group")
app.add_typer(store.app, name="store")
app.add_typer(token_cli.app, name="token")
app.add_typer(image.app, name="image")
app.add_typer(scheduler_cli.app, name="scheduler")
app.add_typer(lab_cli.app, name="lab")
app.command("serve")(serve.serve)
app.command("status")(status.status)
app.command("audit")(audit.audit)
app.command("heads")(heads.heads)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"provisioner {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Settings file (default: $PROVISIONER_CONFIG, else the "
        "lab's when one is up, else /etc/provisioner/provisioner.toml when present; "
        "`provisioner status` shows which).", show_default=False),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = CliState(config=config)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="provisioner")
