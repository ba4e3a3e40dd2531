"""`provisioner image ...`: build, list, show, set-current, prune, delete and import boot images.

A build or an import publishes a new version without making it current (unless --activate, or
the image has no current version yet); every prune, the one after a publish included, keeps
the current version and the versions nodes, groups or the defaults pin (`image=NAME:VERSION`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.audit import AdminChange, recorded
from provisioner.cli.common import (
    JSON_OPTION,
    print_fields,
    print_json,
    print_table,
    state,
    store_missing,
    with_inventory,
)
from provisioner.config import Settings
from provisioner.errors import ValidationError
from provisioner.images.format.catalog import ImageCatalog, ImageVersion, Pruned, pins, split_ref
from provisioner.inventory.repository import Inventory

app = typer.Typer(help="Boot images: build from a kickstart, list, show, set-current, prune, "
                  "delete, import.", no_args_is_help=True)

REF_ARG = typer.Argument(..., help="NAME (its current version) or NAME:VERSION.",
                         show_default=False)
ACTIVATE = typer.Option(False, "--activate", help="Also make the new version current (without "
                        "it, only an image with no current version gets one).")


def catalog_of(settings: Settings) -> ImageCatalog:
    return ImageCatalog(settings.images_dir, keep=settings.images.keep)


def pinned_catalog(ctx: typer.Context) -> ImageCatalog:
    """The catalog with the versions the store's nodes, groups and the defaults pin: what a
    change that may prune works on."""
    settings = state(ctx).settings
    found = pins([], [], settings.defaults)
    if not store_missing(state(ctx).target):
        async def read(inv: Inventory) -> dict[str, set[str]]:
            return pins(await inv.list_nodes(), await inv.list_groups(), settings.defaults)

        found = with_inventory(ctx, read, read=True)
    return ImageCatalog(settings.images_dir, keep=settings.images.keep, pinned=found)


def _say_pruned(pruned: Pruned | None, change: AdminChange) -> None:
    """Print what a prune deleted and kept (and why), and put it in the audit entry."""
    if pruned is None:
        return
    change.detail |= {"pruned": pruned.deleted, "kept": pruned.kept}
    for line in pruned.lines():
        typer.echo(line, err=True)


def parse_vars(pairs: list[str]) -> dict[str, Any]:
    """--var k=v; a value starting with [ or { is JSON (lists for `modules`, `ssh_keys`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValidationError("--var", f"{pair!r} is not NAME=VALUE")
        if value.startswith(("[", "{")):
            try:
                values[key.strip()] = json.loads(value)
            except ValueError as exc:
                raise ValidationError("--var", f"{key}: not valid JSON ({exc})") from None
        else:
            values[key.strip()] = value
    return values


class StepProgress:
    """A bar on a terminal, else one line per step: `image build: 40% rootfs ...`."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = ("", 0.0)  # step and time of the last line written to a non-terminal

    def __call__(self, step: str, done: float, detail: str) -> None:
        elapsed = time.monotonic() - self.start
        if not self.tty and step == self.last[0] and elapsed - self.last[1] < 5:
            return  # a log gets a line per step and one every 5 s, not one per chunk
        self.last = (step, elapsed)
        text = f"{done * 100:3.0f}% {step}{': ' + detail if detail else ''} ({elapsed:.1f} s)"
        if self.tty:
            bar = "#" * int(done * 20)
            sys.stderr.write(f"\r\x1b[K[{bar:<20}] {text}")
        else:
            sys.stderr.write(f"image build: {text}\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _summary(image: ImageVersion) -> dict[str, Any]:
    files = image.manifest.get("files", {})
    return {"name": image.name, "version": image.version, "current": image.current,
            "path": str(image.path), "kernel_release": image.manifest.get("kernel_release"),
            "created": image.manifest.get("created"),
            "size": sum(f.get("size", 0) for f in files.values()),
            "urls": {f: image.url_path(f) for f in files}, "manifest": dict(image.manifest)}


@app.command("build")
def build(
    ctx: typer.Context,
    template: str = typer.Argument(..., help="Kickstart template: a name under templates/ "
                                   "(kickstart/compute.ks.j2) or a file path.",
                                   show_default=False),
    name: str = typer.Option(..., "--name", "-n", help="Image name.", show_default=False),
    variables: list[str] = typer.Option([], "--var", help="Template variable NAME=VALUE "
                                        "(repeatable; [..] or {..} is JSON)."),
    kernel: str | None = typer.Option(None, "--kernel", help="Kernel package, .deb or unpacked "
                                      "tree (overrides the kickstart's `kernel`)."),
    force: bool = typer.Option(False, "--force", help="Build even if nothing changed."),
    activate: bool = ACTIVATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Build an image from a kickstart template and publish it as a new version."""
    from provisioner.images.build.builder import BuildRequest, BuildResult, ImageBuilder
    from provisioner.render.environment import Renderer

    settings = state(ctx).settings
    progress = StepProgress()
    catalog = pinned_catalog(ctx)
    builder = ImageBuilder(catalog, Renderer.from_settings(settings.images.templates),
                           settings.cache_dir, default_kernel=settings.images.kernel_package,
                           xz_threads=settings.images.xz_threads, progress=progress)
    request = BuildRequest(template, name, parse_vars(variables), kernel, force)
    change = AdminChange("image.publish", name, {"template": template, "activate": activate})

    def work() -> BuildResult:
        try:
            built = builder.build(request)
        finally:
            progress.finish()
        change.target, change.detail["cached"] = built.image.ref, built.cached
        _say_pruned(catalog.last_prune, change)
        return built

    result = recorded(ctx, change, work)
    if activate and not result.image.current:
        result = dataclasses.replace(result, image=_activate(ctx, catalog, result.image))
    if as_json:
        print_json({**_summary(result.image), "cached": result.cached,
                    "seconds": round(result.seconds, 3)})
    elif result.cached:
        typer.echo(f"{result.image.ref} is up to date (same inputs); nothing built "
                   f"({result.seconds:.1f} s; --force to rebuild)")
    else:
        typer.echo(f"built {result.image.ref} in {result.seconds:.1f} s; "
                   f"{_standing(catalog, result.image)}")


def _standing(catalog: ImageCatalog, image: ImageVersion) -> str:
    if image.current:
        return "it is current"
    return (f"current is still {image.name}:{catalog.current_version(image.name)} "
            f"(`provisioner image set-current {image.name} {image.version}` to switch)")


def _activate(ctx: typer.Context, catalog: ImageCatalog, image: ImageVersion) -> ImageVersion:
    change = AdminChange("image.set_current", image.ref)
    return recorded(ctx, change, lambda: catalog.set_current(image.name, image.version))


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Every image version; `*` marks the current one."""
    images = catalog_of(state(ctx).settings).list()
    if as_json:
        print_json([_summary(i) for i in images])
        return
    print_table(["name", "version", "current", "kernel", "size", "created"],
                [(i.name, i.version, "*" if i.current else "", i.manifest.get("kernel_release"),
                  _size(_summary(i)["size"]), i.manifest.get("created")) for i in images])


def _size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = REF_ARG,
    verify: bool = typer.Option(False, "--verify", help="Check the files' sha256."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One image version: its files, checksums, kernel and URLs."""
    catalog = catalog_of(state(ctx).settings)
    image = catalog.resolve(ref)
    bad = catalog.verify(image) if verify else []
    if as_json:
        print_json({**_summary(image), **({"verify_failed": bad} if verify else {})})
    else:
        files = image.manifest.get("files", {})
        print_fields([("image", image.ref), ("current", "yes" if image.current else "no"),
                      ("path", image.path),
                      ("kernel", image.manifest.get("kernel_release")),
                      ("created", image.manifest.get("created")),
                      ("inputs", image.manifest.get("inputs_sha256")),
                      *((f, f"{m.get('size')} bytes sha256 {m.get('sha256')} "
                         f"url {image.url_path(f)}") for f, m in files.items())])
    if bad:
        from provisioner.errors import ChecksumMismatch

        raise ChecksumMismatch(f"{image.ref}: {', '.join(bad)} do not match the manifest; "
                               "rebuild or re-import it")


@app.command("set-current")
def set_current(
    ctx: typer.Context,
    name: str = typer.Argument(..., show_default=False),
    version: str = typer.Argument(..., show_default=False),
) -> None:
    """Point NAME at VERSION (roll back or forward); nodes get it at their next boot."""
    catalog = catalog_of(state(ctx).settings)
    image = recorded(ctx, AdminChange("image.set_current", f"{name}:{version}"),
                     lambda: catalog.set_current(name, version))
    typer.echo(f"{image.name} is now {image.ref}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: str = REF_ARG,
    force: bool = typer.Option(False, "--force", help="Also delete the current version."),
) -> None:
    """Delete one version, or a whole image; the current version only with --force."""
    name, version = split_ref(ref)
    catalog = catalog_of(state(ctx).settings)
    typer.echo(recorded(ctx, AdminChange("image.delete", ref, {"force": force}),
                        lambda: catalog.delete(name, version, force=force)))


@app.command("prune")
def prune(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Image names (default: every image).",
                                      show_default=False),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete versions beyond the newest [images] keep; never the current one, nor one a node,
    a group or the defaults pin with image=NAME:VERSION (says which it kept and why)."""
    catalog = pinned_catalog(ctx)
    done = []
    for name in names or catalog.names():
        change = AdminChange("image.prune", name)

        def work(name: str = name, change: AdminChange = change) -> Pruned:
            pruned = catalog.prune(name)
            change.detail |= {"pruned": pruned.deleted, "kept": pruned.kept}
            return pruned

        done.append(recorded(ctx, change, work))
    if as_json:
        print_json([{"name": p.name, "pruned": p.deleted, "kept": p.kept} for p in done])
        return
    for pruned in done:
        lines = pruned.lines()
        typer.echo("\n".join(lines) if lines else f"{pruned.name}: nothing to prune")


@app.command("import")
def import_(
    ctx: typer.Context,
    name: str = typer.Argument(..., show_default=False),
    kernel: Path = typer.Option(..., "--kernel", help="Kernel image (bzImage).",
                                show_default=False),
    initrd: Path = typer.Option(..., "--initrd", help="Initramfs (xz with a CRC32 check, "
                                "gzip or plain cpio).", show_default=False),
    activate: bool = ACTIVATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Publish an existing kernel + initramfs pair as the next version of NAME."""
    catalog = pinned_catalog(ctx)
    change = AdminChange("image.publish", name, {"imported": True, "activate": activate})

    def work() -> ImageVersion:
        image = catalog.import_pair(name, kernel, initrd, activate=activate)
        change.target = image.ref
        _say_pruned(catalog.last_prune, change)
        return image

    image = recorded(ctx, change, work)
    if as_json:
        print_json(_summary(image))
    else:
        typer.echo(f"imported {image.ref}; {_standing(catalog, image)}")
