"""`provisioner node reimage NODES --image NAME[:VERSION]` and `--status`."""

from __future__ import annotations

import time

import typer

from provisioner.cli.audit import AdminChange, record
from provisioner.cli.common import JSON_OPTION, print_fields, print_json, print_table, state
from provisioner.config import Settings
from provisioner.errors import ProvisionerError, ValidationError
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Node, check_setting, setting_values
from provisioner.nodes.rollout import (
    Progress,
    Rollout,
    RolloutRequest,
    RolloutStatus,
    load_status,
)
from provisioner.power.base import PowerDriver
from provisioner.power.registry import open_power
from provisioner.store import open_store


def reimage(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(None, help="Node names or MACs.", show_default=False),
    image: str | None = typer.Option(None, "--image", help="Image NAME (its current version) "
                                     "or NAME:VERSION.", show_default=False),
    wave: int = typer.Option(1, "--wave", min=1, help="Nodes reimaged at the same time."),
    max_failures: int = typer.Option(1, "--max-failures", min=1,
                                     help="Stop starting nodes once this many have failed."),
    force: bool = typer.Option(False, "--force", help="Do not wait for running jobs to end."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds from power-cycle to ready "
                                  "per node."),
    idle_timeout: float = typer.Option(3600.0, "--idle-timeout",
                                       help="Seconds to wait for a node's jobs to end."),
    status: bool = typer.Option(False, "--status", help="Show the last rollout (or --id)."),
    rollout_id: str | None = typer.Option(None, "--id", help="With --status: this rollout."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Reimage nodes in waves, live; --status shows the last rollout.

    Per node: drain in the scheduler, wait until idle (or --force), set the image,
    power-cycle, wait for the callback from the new version, resume."""
    target = state(ctx).target
    settings = target.settings
    if status:
        result = target.run(lambda: _load(settings, rollout_id))
        _show(result, as_json)
        return
    if not refs or not image:
        raise ValidationError("reimage", "name the nodes and --image NAME[:VERSION] "
                              "(or use --status)")
    check_setting("image", image)
    version = _resolve_version(settings, image)
    request = RolloutRequest(nodes=tuple(refs), image=image, version=version, wave=wave,
                             max_failures=max_failures, force=force, timeout=timeout,
                             idle_timeout=idle_timeout)
    result = target.run(lambda: _run(settings, request, as_json), timeout=None)
    if as_json:
        print_json(result.to_dict())
    if result.state != "succeeded":
        raise typer.Exit(1)


def _resolve_version(settings: Settings, ref: str) -> str:
    """The version the callback must report; refuses an image that does not exist."""
    from provisioner.images.format.catalog import ImageCatalog

    return ImageCatalog(settings.images_dir, keep=settings.images.keep).resolve(ref).version


async def _load(settings: Settings, rollout_id: str | None) -> RolloutStatus:
    store = open_store(settings)
    try:
        return await load_status(Inventory(store), rollout_id)
    finally:
        await store.close()


async def _run(settings: Settings, request: RolloutRequest, quiet: bool) -> RolloutStatus:
    from provisioner.handoff import open_handoff
    from provisioner.nodes.lifecycle import Lifecycle

    store = open_store(settings)
    inventory = Inventory(store)
    scheduler = open_handoff(settings)
    try:
        await inventory.start()
        lifecycle = Lifecycle(inventory, handoff=None, defaults=settings.defaults)

        async def power_for(node: Node) -> PowerDriver:
            effective = await inventory.effective(node, settings.defaults)
            return open_power(setting_values(effective), node=node.name,
                              notify=lambda text: typer.echo(text, err=True))

        rollout = Rollout(inventory, lifecycle, scheduler, power_for,
                          on_progress=None if quiet else _print_progress)
        change = AdminChange("reimage.start", "-", {"image": request.image,
                                               "nodes": list(request.nodes[:50])})
        try:
            result = await rollout.run(request)
        except ProvisionerError as exc:
            change.detail["error"] = str(exc)[:300]
            await record(store, change, "failed")
            raise
        change.target, change.detail["state"] = result.id, result.state
        await record(store, change, "ok" if result.state == "succeeded" else "failed")
        return result
    finally:
        await scheduler.close()
        await inventory.stop()
        await store.close()


def _print_progress(event: Progress) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    typer.echo(f"{stamp}  {event.node or '-':<16} {event.step:<17} {event.message}")


def _show(result: RolloutStatus, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.finished)) \
        if result.finished else "still running"
    print_fields([("rollout", result.id), ("image", result.image),
                  ("version", result.version), ("state", result.state),
                  ("started", time.strftime("%Y-%m-%d %H:%M:%S",
                                            time.localtime(result.started))),
                  ("finished", ended), ("wave", result.wave),
                  ("max failures", result.max_failures), ("force", result.force)])
    typer.echo("")
    print_table(["node", "wave", "step", "seconds", "message"],
                [[n.name, n.wave, n.step.value, _seconds(n.started, n.finished), n.message]
                 for n in result.nodes.values()])


def _seconds(started: float | None, finished: float | None) -> str:
    if started is None or finished is None:
        return ""
    return f"{finished - started:.1f}"
