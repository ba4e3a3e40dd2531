"""The `oci PATH` base: apply an OCI image layout's layers to an image root, in order.

Whiteouts follow the OCI image spec (layer.md): `.wh.NAME` removes NAME from the lower layers,
`.wh..wh..opq` empties its directory of them. Layers may be plain, gzip or zstd tars. Every
member is checked to stay inside the root, also through symlinks a lower layer created, since
the build runs as root.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from provisioner.images.build.rootfs import Where, inside_root

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def apply_oci(root: Path, layout: Path, where: Where) -> list[str]:
    """Apply an OCI image layout's layers in order; returns the layer digests."""
    layers = _oci_layers(layout, where)
    for digest in layers:
        blob = layout / "blobs" / digest.replace(":", "/", 1)
        if not blob.is_file():
            raise where.error(f"OCI layer {digest} is missing from {layout}/blobs")
        with _open_layer(blob, where) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _apply_member(root, tar, member, where)
    return layers


def _oci_layers(layout: Path, where: Where) -> list[str]:
    try:
        doc = json.loads((layout / "index.json").read_text())
        for _ in range(4):  # an index may point at another index (multi-platform images)
            manifests = doc.get("manifests") or []
            chosen = next((m for m in manifests
                           if m.get("platform", {}).get("architecture", "amd64") == "amd64"),
                          None)
            if chosen is None:
                raise where.error(f"{layout}: no amd64 manifest in index.json")
            digest = chosen["digest"]
            doc = json.loads((layout / "blobs" / digest.replace(":", "/", 1)).read_text())
            if doc.get("mediaType") != _OCI_INDEX and "layers" in doc:
                return [layer["digest"] for layer in doc["layers"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise where.error(f"{layout} is not a readable OCI image layout ({exc})") from None
    raise where.error(f"{layout}: no image manifest found")


@contextlib.contextmanager
def _open_layer(blob: Path, where: Where) -> Iterator[IO[bytes]]:
    with blob.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield unzipped  # type: ignore[misc]
        elif magic == b"\x28\xb5\x2f\xfd":
            proc = subprocess.Popen(["zstd", "-dc"], stdin=raw, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            try:
                yield proc.stdout
            finally:
                proc.stdout.close()
                if proc.wait(timeout=60) != 0:
                    raise where.error(f"OCI layer {blob.name}: zstd failed")
        else:
            yield raw


def _apply_member(root: Path, tar: tarfile.TarFile, member: tarfile.TarInfo,
                  where: Where) -> None:
    directory, _, base = member.name.rstrip("/").rpartition("/")
    if base == ".wh..wh..opq":  # opaque directory: lower layers' contents disappear
        target = inside_root(root, directory, where) if directory else root
        for child in target.iterdir() if target.is_dir() else ():
            _remove(child)
        return
    if base.startswith(".wh."):
        _remove(inside_root(root, f"{directory}/{base[4:]}", where))
        return
    target = inside_root(root, member.name, where)
    if member.islnk():
        inside_root(root, member.linkname, where)
    if target.is_symlink() or (target.exists() and not (target.is_dir() and member.isdir())):
        _remove(target)
    tar.extract(member, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
