"""`provisioner image ...`: build, list, show, set-current, delete and import boot images."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.common import JSON_OPTION, print_fields, print_json, print_table, state
from provisioner.config import Settings
from provisioner.errors import ValidationError
from provisioner.images.format.catalog import ImageCatalog, ImageVersion, split_ref

app = typer.Typer(help="Boot images: build from a kickstart, list, show, set-current, delete, "
                  "import.", no_args_is_help=True)

REF_ARG = typer.Argument(..., help="NAME (its current version) or NAME:VERSION.",
                         show_default=False)


def catalog_of(settings: Settings) -> ImageCatalog:
    return ImageCatalog(settings.images_dir, keep=settings.images.keep)


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
    as_json: bool = JSON_OPTION,
) -> None:
    """Build an image from a kickstart template and make it the current version."""
    from provisioner.images.build.builder import BuildRequest, ImageBuilder
    from provisioner.render.environment import Renderer

    settings = state(ctx).settings
    progress = StepProgress()
    builder = ImageBuilder(catalog_of(settings), Renderer.from_settings(settings.images.templates),
                           settings.cache_dir, default_kernel=settings.images.kernel_package,
                           xz_threads=settings.images.xz_threads, progress=progress)
    request = BuildRequest(template, name, parse_vars(variables), kernel, force)
    try:
        result = builder.build(request)
    finally:
        progress.finish()
    if as_json:
        print_json({**_summary(result.image), "cached": result.cached,
                    "seconds": round(result.seconds, 3)})
    elif result.cached:
        typer.echo(f"{result.image.ref} is up to date (same inputs); nothing built "
                   f"({result.seconds:.1f} s; --force to rebuild)")
    else:
        typer.echo(f"built {result.image.ref} in {result.seconds:.1f} s; it is current")


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
    image = catalog_of(state(ctx).settings).set_current(name, version)
    typer.echo(f"{image.name} is now {image.ref}")


@app.command("delete")
def delete(
    ctx: typer.Context,
    ref: str = REF_ARG,
    force: bool = typer.Option(False, "--force", help="Also delete the current version."),
) -> None:
    """Delete one version, or a whole image; the current version only with --force."""
    name, version = split_ref(ref)
    typer.echo(catalog_of(state(ctx).settings).delete(name, version, force=force))


@app.command("import")
def import_(
    ctx: typer.Context,
    name: str = typer.Argument(..., show_default=False),
    kernel: Path = typer.Option(..., "--kernel", help="Kernel image (bzImage).",
                                show_default=False),
    initrd: Path = typer.Option(..., "--initrd", help="Initramfs (xz with a CRC32 check, "
                                "gzip or plain cpio).", show_default=False),
    as_json: bool = JSON_OPTION,
) -> None:
    """Publish an existing kernel + initramfs pair as the next version of NAME."""
    image = catalog_of(state(ctx).settings).import_pair(name, kernel, initrd)
    if as_json:
        print_json(_summary(image))
    else:
        typer.echo(f"imported {image.ref}; it is current")
