"""Apply a parsed kickstart to an image root, in a fixed order:

    base -> %packages -> %files -> rootpw, users, sshkeys, timezone -> %post (in order)
      -> services -> busybox applets /init needs (bases other than busybox)

Services come after %post so that a %post may write the /etc/init.d script it enables. Paths
in `base tarball|oci PATH` and %files SRC are relative to the kickstart file's directory (the
current directory for a template given by name). Error lines are lines of the rendered
kickstart; the parser keeps lines only for %post and %files, so the others are found again in
the text here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provisioner.images.build import accounts, oci, rootfs
from provisioner.images.build.kickstart import Kickstart
from provisioner.images.build.rootfs import BuildLog, Where
from provisioner.images.fsutil import sha256_file

#: Applets never linked into a non-busybox image: they would replace its own init.
_NOT_LINKED = {"sbin/init", "linuxrc"}


def directive_line(text: str, word: str, contains: str = "") -> int:
    """1-based line of the first directive `word` (containing `contains`), else 0."""
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if parts and parts[0] == word and contains in line:
            return number
    return 0


def package_lines(text: str) -> list[tuple[str, int]]:
    """(package, line) for each name in the %packages section."""
    found: list[tuple[str, int]] = []
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.split(maxsplit=1)[0] if line.strip() else ""
        if word == "%packages":
            inside = True
        elif inside and word == "%end":
            break
        elif inside:
            with_comments = line.split("#", 1)[0]
            found += [(name, number) for name in with_comments.replace("\\", " ").split()]
    return found


def base_dir(source: str) -> Path:
    path = Path(source)
    return path.resolve().parent if path.is_file() else Path.cwd()


def apply_kickstart(root: Path, ks: Kickstart, source: str, text: str, log: BuildLog, *,
                    cache: Path, busybox: Path = rootfs.BUSYBOX) -> None:
    here = base_dir(source)
    _base(root, ks, Where(source, directive_line(text, "base")), here, log, cache=cache,
          busybox=busybox)
    _packages(root, ks, source, text, log, debs=cache / "packages")
    for copy in ks.files:
        rootfs.copy_in(root, here / copy.src, copy.dest, Where(source, copy.line), copy.mode)
    _accounts(root, ks, source, text)
    for post in ks.posts:
        rootfs.run_post(root, post.body, Where(source, post.line), log, nochroot=post.nochroot,
                        interpreter=post.interpreter, cwd=here)
    if ks.services_enabled or ks.services_disabled:
        accounts.enable_services(root, ks.services_enabled, ks.services_disabled,
                                 Where(source, directive_line(text, "services")), log)
    if ks.base.kind != "busybox":
        add_busybox_applets(root, busybox)


def _base(root: Path, ks: Kickstart, where: Where, here: Path, log: BuildLog, *, cache: Path,
          busybox: Path) -> None:
    base = ks.base
    log.step(f"base {base.kind}")
    if base.kind == "busybox":
        rootfs.install_busybox(root, busybox)
    elif base.kind == "debootstrap":
        assert base.suite is not None
        rootfs.debootstrap(root, base.suite, base.mirror, cache=cache, log=log, where=where)
    elif base.kind == "tarball":
        rootfs.extract_tarball(root, here / str(base.path), log, where)
    else:
        oci.apply_oci(root, here / str(base.path), where)


def _packages(root: Path, ks: Kickstart, source: str, text: str, log: BuildLog,
              *, debs: Path) -> None:
    if not ks.packages:
        return
    lines = package_lines(text) or [(name, 0) for name in ks.packages]
    if not rootfs.has_apt(root):
        what = "the busybox base has" if ks.base.kind == "busybox" else "this base has"
        raise Where(source, lines[0][1]).error(
            f"%packages: {what} no package manager; use `base debootstrap SUITE`, or copy "
            "files in with %files")
    log.step("%packages " + " ".join(ks.packages))
    rootfs.install_packages(root, lines, source, log, debs)


def _accounts(root: Path, ks: Kickstart, source: str, text: str) -> None:
    if ks.rootpw is not None:
        crypted = ks.rootpw.password_hash or "!"
        accounts.set_root_password(root, f"!{crypted}" if ks.rootpw.locked and
                                   ks.rootpw.password_hash else crypted)
    for user in ks.users:
        where = Where(source, directive_line(text, "user", f"--name={user.name}")
                      or directive_line(text, "user"))
        accounts.add_user(root, user.name, where, uid=user.uid, groups=user.groups,
                          crypted=user.password_hash, shell=user.shell or "/bin/sh")
    for key in ks.sshkeys:
        where = Where(source, directive_line(text, "sshkey", key.username))
        accounts.add_ssh_key(root, key.username, key.key, where)
    if ks.timezone:
        accounts.set_timezone(root, ks.timezone, Where(source, directive_line(text, "timezone")))


def add_busybox_applets(root: Path, busybox: Path) -> None:
    """/init is busybox sh code (udhcpc, wget, insmod, ip): give images without busybox the
    applets they lack, never replacing a file the image has."""
    target = root / "bin/busybox"
    if not target.exists() and not target.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(busybox.read_bytes())
        target.chmod(0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet in _NOT_LINKED or link.exists() or link.is_symlink():
            continue
        if not os.path.isdir(os.path.realpath(link.parent)):
            continue  # e.g. usr/sbin missing: skip rather than reshape the image's tree
        link.symlink_to("/bin/busybox")


def base_inputs(ks: Kickstart, source: str, busybox: Path) -> dict[str, Any]:
    """What the base and %files read from disk, for the build's inputs_sha256."""
    here = base_dir(source)
    base = ks.base
    inputs: dict[str, Any] = {"kind": base.kind}
    inputs["busybox"] = sha256_file(busybox) if busybox.is_file() else "missing"
    if base.kind == "debootstrap":
        inputs["suite"] = [base.suite, base.mirror or rootfs.default_mirror()]
    elif base.kind == "tarball":
        inputs["tarball"] = _digest(here / str(base.path))
    elif base.kind == "oci":
        inputs["oci"] = _digest(here / str(base.path) / "index.json")
    inputs["files"] = [[f.src, f.dest, f.mode, _tree_digest(here / f.src)] for f in ks.files]
    return inputs


def _digest(path: Path) -> str:
    return sha256_file(path) if path.is_file() else "missing"


def _tree_digest(path: Path) -> str:
    if not path.is_dir():
        return _digest(path)
    digest = hashlib.sha256()
    for file in _walk(path):
        digest.update(json.dumps([file.relative_to(path).as_posix(), _digest(file)]).encode())
    return digest.hexdigest()


def _walk(path: Path) -> Iterator[Path]:
    for child in sorted(path.rglob("*")):
        if child.is_file():
            yield child
