"""The image catalog on disk: immutable versions, one current version per name.

    IMAGES_DIR/NAME/VERSION/{vmlinuz, image.cpio.xz, manifest.json, build.log}
    IMAGES_DIR/NAME/current -> VERSION          (a relative symlink)
    IMAGES_DIR/.staging/NAME-PID-RANDOM/         (builds in progress; same filesystem)

Why it is shaped like this: the HTTP boot plane serves files straight from the version
directories, so a version must never change once visible. Publishing is therefore one
rename(2) of a complete staging directory, and moving `current` is a symlink created under a
temporary name and renamed over the old one: a reader sees the old version or the new one,
never a mix. Publishing does not move `current` (a new version is tried on one node with
NAME:VERSION first) unless asked to, or unless NAME has no current version yet. Pruning keeps
the newest `keep` versions, the current one, and every version a node, a group or the defaults
pin by naming NAME:VERSION in their `image` setting (the caller reads those from the store and
hands them over as `pinned`). Every change to a name runs under an flock on
IMAGES_DIR/NAME/.lock, so two builds publishing the same name at once get different
versions. Deleting renames first (`.trash-...`) and removes after, so a half-deleted version
is never listed.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ImageError, ImageNotFound, ValidationError
from provisioner.images.fsutil import (
    describe_files,
    kernel_release,
    refuse_crc64,
    remove_tree,
    sha256_file,
)
from provisioner.nodes.model import Group, Node, SettingValue

__all__ = ["MANIFEST", "STAGING", "ImageCatalog", "ImageInfo", "ImageVersion", "Pruned",
           "check_name", "check_version", "describe_files", "pins", "sha256_file", "split_ref",
           "utc_now"]

MANIFEST = "manifest.json"
STAGING = ".staging"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationError("image name", f"{name!r} must be 1-63 of a-z 0-9 _ . - "
                              "starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise ValidationError("image version", f"{version!r} is not a version (1, 2, ...)")
    return version


def split_ref(ref: str) -> tuple[str, str | None]:
    """'NAME' -> (NAME, None); 'NAME:VERSION' -> (NAME, VERSION)."""
    name, sep, version = ref.partition(":")
    return check_name(name), (check_version(version) if sep else None)


def pins(nodes: Collection[Node], groups: Collection[Group],
         defaults: Mapping[str, SettingValue]) -> dict[str, set[str]]:
    """NAME:VERSION -> who names it in an `image` setting ("node n1", "group gpu",
    "defaults"): the versions a prune must keep. `image NAME` follows current: no pin."""
    found: dict[str, set[str]] = {}
    named: builtins.list[tuple[str, object]] = [(f"node {n.name}", n.image) for n in nodes]
    named += [(f"node {n.name}", n.settings.get("image")) for n in nodes]
    named += [(f"group {g.name}", g.settings.get("image")) for g in groups]
    named.append(("defaults", defaults.get("image")))
    for who, ref in named:
        if isinstance(ref, str) and ":" in ref:
            found.setdefault(ref, set()).add(who)
    return found


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageVersion:
    name: str
    version: str
    path: Path
    manifest: Mapping[str, Any]
    current: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def url_path(self, file: str) -> str:
        return f"/boot/images/{self.name}/{self.version}/{file}"

    def file(self, file: str) -> Path:
        return self.path / file


@dataclass(frozen=True)
class ImageInfo:
    name: str
    current: str | None
    versions: tuple[ImageVersion, ...]


@dataclass
class Pruned:
    """What a prune of one name did: the versions it deleted, and those it kept beyond the
    newest `keep` with the reason ("current", "pinned by node n1, group gpu")."""

    name: str
    deleted: builtins.list[str] = field(default_factory=builtins.list)
    kept: dict[str, str] = field(default_factory=dict)

    def lines(self) -> builtins.list[str]:
        said = [f"pruned {self.name}:{v}" for v in self.deleted]
        return said + [f"kept {self.name}:{v}: {why}" for v, why in self.kept.items()]


class ImageCatalog:
    def __init__(self, root: Path, keep: int = 3,
                 pinned: Mapping[str, Collection[str]] | None = None) -> None:
        """`pinned`: NAME:VERSION -> who pins it ("node n1", "group gpu", "defaults")."""
        if keep < 1:
            raise ValidationError("images.keep", f"{keep} must be at least 1")
        self.root = root
        self.keep = keep
        self.pinned: Mapping[str, Collection[str]] = dict(pinned or {})
        #: what the prune of the last publish did, for the CLI to say
        self.last_prune: Pruned | None = None

    # -- reading -------------------------------------------------------------------------

    def names(self) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _NAME.fullmatch(p.name))

    def list(self) -> builtins.list[ImageVersion]:
        """Every version of every image, by name then version number."""
        return [v for name in self.names() for v in self.show(name).versions]

    def show(self, name: str) -> ImageInfo:
        check_name(name)
        image_dir = self.root / name
        if not image_dir.is_dir():
            raise ImageNotFound(f"no image {name!r}; see `provisioner image list`")
        current = self.current_version(name)
        versions = tuple(self._load(name, v, current) for v in self._versions(name))
        return ImageInfo(name, current, versions)

    def current_version(self, name: str) -> str | None:
        try:
            target = os.readlink(self.root / name / "current")
        except OSError:
            return None
        return target if _VERSION.fullmatch(target) else None

    def resolve(self, ref: str) -> ImageVersion:
        """'NAME' is its current version; 'NAME:VERSION' that version."""
        name, version = split_ref(ref)
        if not (self.root / name).is_dir():
            raise ImageNotFound(f"no image {name!r}; see `provisioner image list`")
        if version is None:
            version = self.current_version(name)
            if version is None:
                what = "no versions" if not self._versions(name) else "no current version"
                raise ImageNotFound(f"image {name!r} has {what}; see `provisioner image list`")
        if not (self.root / name / version).is_dir():
            raise ImageNotFound(f"no image {name}:{version}; see `provisioner image list`")
        return self._load(name, version, self.current_version(name))

    def verify(self, image: ImageVersion) -> builtins.list[str]:
        """Files whose sha256 or size differ from the manifest (empty: all good)."""
        bad = []
        for file, meta in image.manifest.get("files", {}).items():
            path = image.path / file
            if not path.is_file() or path.stat().st_size != meta.get("size") \
                    or sha256_file(path) != meta.get("sha256"):
                bad.append(file)
        return bad

    # -- changing ------------------------------------------------------------------------

    def new_staging(self, name: str) -> Path:
        """A fresh staging directory on the catalog's filesystem (so publish can rename)."""
        check_name(name)
        base = self.root / STAGING
        base.mkdir(parents=True, exist_ok=True)
        self._sweep_staging(base)
        path = base / f"{name}-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def publish(self, staging: Path, name: str, *, activate: bool = False) -> ImageVersion:
        """Make a complete staging directory the next version of NAME, then prune. It becomes
        current only with `activate`, or when NAME has no current version."""
        check_name(name)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        with self._locked(name):
            version = str(max((int(v) for v in self._versions(name)), default=0) + 1)
            manifest = self._read_manifest(staging)
            manifest.update(name=name, version=version)
            _write_json(staging / MANIFEST, manifest)
            _fsync_tree(staging)
            _owned_like(self.root, [self.root / name, staging, *staging.rglob("*")])
            os.rename(staging, self.root / name / version)
            if activate or self.current_version(name) is None:
                self._set_current_locked(name, version)
            self.last_prune = self._prune_locked(name)
        return self.resolve(f"{name}:{version}")

    def set_current(self, name: str, version: str) -> ImageVersion:
        check_name(name)
        check_version(version)
        with self._locked(name):
            if not (self.root / name / version).is_dir():
                raise ImageNotFound(f"no image {name}:{version}; see `provisioner image list`")
            self._set_current_locked(name, version)
        return self.resolve(f"{name}:{version}")

    def prune(self, name: str) -> Pruned:
        """Delete versions beyond the newest `keep`, but never the current or a pinned one."""
        check_name(name)
        if not (self.root / name).is_dir():
            raise ImageNotFound(f"no image {name!r}; see `provisioner image list`")
        with self._locked(name):
            return self._prune_locked(name)

    def delete(self, name: str, version: str | None = None, *, force: bool = False) -> str:
        """Delete one version, or the whole image; returns what happened, for the CLI.

        The current version is refused unless `force`; forced, `current` moves to the newest
        remaining version (or goes away with the last one), so nodes keep booting something.
        """
        info = self.show(name)
        with self._locked(name):
            if version is None:
                if info.current and not force:
                    raise ImageError(f"{name}: version {info.current} is current; "
                                     "pass --force to delete the whole image")
                self._trash(self.root / name)
                return f"deleted image {name} ({len(info.versions)} version(s))"
            check_version(version)
            if not (self.root / name / version).is_dir():
                raise ImageNotFound(f"no image {name}:{version}; see `provisioner image list`")
            if version == info.current and not force:
                raise ImageError(f"{name}:{version} is the current version; set another "
                                 "current first (`provisioner image set-current`) or pass --force")
            self._trash(self.root / name / version)
            return f"deleted {name}:{version}" + self._repoint_locked(name, version, info.current)

    def import_pair(self, name: str, kernel: Path, initrd: Path, *,
                    activate: bool = False) -> ImageVersion:
        """Publish an existing kernel + initramfs as the next version of NAME."""
        check_name(name)
        for path in (kernel, initrd):
            if not path.is_file():
                raise ImageError(f"{path}: no such file")
        refuse_crc64(initrd)
        staging = self.new_staging(name)
        try:
            shutil.copyfile(kernel, staging / "vmlinuz")
            shutil.copyfile(initrd, staging / "image.cpio.xz")
            files = describe_files(staging)
            inputs = hashlib.sha256("".join(f["sha256"] for f in files.values()).encode())
            _write_json(staging / MANIFEST, {
                "name": name, "version": None, "files": files, "imported": True,
                "kernel_release": kernel_release(staging / "vmlinuz"),
                "inputs_sha256": inputs.hexdigest(), "created": utc_now()})
            return self.publish(staging, name, activate=activate)
        finally:
            remove_tree(staging)

    # -- internals -----------------------------------------------------------------------

    def _versions(self, name: str) -> builtins.list[str]:
        image_dir = self.root / name
        if not image_dir.is_dir():
            return []
        found = [p.name for p in image_dir.iterdir()
                 if _VERSION.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted(found, key=int)

    def _load(self, name: str, version: str, current: str | None) -> ImageVersion:
        path = self.root / name / version
        return ImageVersion(name, version, path, self._read_manifest(path), version == current)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            data = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _set_current_locked(self, name: str, version: str) -> None:
        link = self.root / name / "current"
        tmp = self.root / name / f".current-{secrets.token_hex(4)}"
        os.symlink(version, tmp)
        os.rename(tmp, link)
        _fsync_dir(self.root / name)

    def _prune_locked(self, name: str) -> Pruned:
        current = self.current_version(name)
        done = Pruned(name)
        # Keep the newest `keep` versions, the current one and the pinned ones wherever they are.
        for version in self._versions(name)[:-self.keep]:
            pins = self.pinned.get(f"{name}:{version}")
            if version == current:
                done.kept[version] = "current"
            elif pins:
                done.kept[version] = "pinned by " + ", ".join(sorted(pins))
            else:
                self._trash(self.root / name / version)
                done.deleted.append(version)
        return done

    def _repoint_locked(self, name: str, deleted: str, current: str | None) -> str:
        if deleted != current:
            return ""
        remaining = self._versions(name)
        if remaining:
            self._set_current_locked(name, remaining[-1])
            return f"; current is now {name}:{remaining[-1]}"
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / "current").unlink()
        return f"; {name} has no versions left"

    def _trash(self, path: Path) -> None:
        trash = self.root / STAGING / f".trash-{secrets.token_hex(6)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, trash)
        remove_tree(trash)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock_dir = self.root / STAGING
        lock_dir.mkdir(parents=True, exist_ok=True)
        # The lock lives outside NAME/ so that deleting the whole image cannot race it.
        with (lock_dir / f".lock-{name}").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _sweep_staging(base: Path) -> None:
        """Remove staging dirs left by builds that died (their PID is gone)."""
        for entry in base.iterdir():
            match = re.fullmatch(r".+-(\d+)-[0-9a-f]{8}", entry.name)
            if match and not _alive(int(match.group(1))):
                remove_tree(entry)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.rename(tmp, path)


def _fsync_tree(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owned_like(root: Path, paths: builtins.list[Path]) -> None:
    """Root publishing into a catalog that belongs to the service user (serve's [service]
    user) hands the new files over, or the appliance could not read what it must serve."""
    if os.geteuid() != 0:
        return
    owner = root.stat()
    if owner.st_uid == 0:
        return
    for path in paths:
        if not path.is_symlink():
            os.chown(path, owner.st_uid, owner.st_gid)
