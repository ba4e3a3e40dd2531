"""Users, the root password, ssh keys, the time zone and services inside an image root.

The account files are edited as text rather than with useradd in a chroot: the busybox base has
no useradd, and text edits give the same result on every base. Only crypt(3) hashes are ever
written (`rootpw --iscrypted`); a clear password never reaches the image.

Services: on an image with systemd, `systemctl enable` in the chroot (it works offline). On the
busybox base there is no service manager; a name is an /etc/init.d script (started with
`start`) or a busybox daemon applet (syslogd, crond, ntpd, ...), run in that order by the rcS
the busybox base installs, from /etc/provisioner/services.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from provisioner.images.build.rootfs import BuildLog, Where, chroot_env, chroot_ready

ZONEINFO = Path("/usr/share/zoneinfo")
_FIRST_UID = 1000


def _read(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split(":") for line in path.read_text().splitlines() if line.strip()]


def _save(path: Path, rows: list[list[str]], default_mode: int = 0o644) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else default_mode
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text("".join(":".join(row) + "\n" for row in rows))
    tmp.chmod(mode)
    if path.exists():
        st = path.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def _set_field(path: Path, name: str, index: int, value: str, *, template: list[str],
               mode: int = 0o644) -> None:
    rows = _read(path)
    for row in rows:
        if row[0] == name:
            row[index] = value
            break
    else:
        row = list(template)
        row[index] = value
        rows.append(row)
    _save(path, rows, mode)


def set_root_password(root: Path, crypted: str) -> None:
    _set_field(root / "etc/shadow", "root", 1, crypted,
               template=["root", "*", "0", "0", "99999", "7", "", "", ""], mode=0o600)


def add_user(root: Path, name: str, where: Where, *, uid: int | None = None,
             groups: Sequence[str] = (), crypted: str | None = None, shell: str = "/bin/sh",
             home: str | None = None) -> tuple[int, int]:
    """Add (or update) a user with a same-named group; returns (uid, gid)."""
    passwd = _read(root / "etc/passwd")
    existing = next((row for row in passwd if row[0] == name), None)
    taken = {int(row[2]) for row in passwd if len(row) > 2 and row[2].isdigit()}
    if existing is not None:
        uid = int(existing[2])
    elif uid is None:
        uid = max([u for u in taken if u < 60000] + [_FIRST_UID - 1]) + 1
        uid = max(uid, _FIRST_UID)
    elif uid in taken:
        raise where.error(f"user {name}: uid {uid} is taken")
    home = home or f"/home/{name}"
    gid = _ensure_group(root, name, uid)
    row = [name, "x", str(uid), str(gid), name, home, shell]
    rows = [r for r in passwd if r[0] != name] + [row]
    _save(root / "etc/passwd", rows)
    shadow_hash = crypted or "!"
    _set_field(root / "etc/shadow", name, 1, shadow_hash,
               template=[name, "!", "0", "0", "99999", "7", "", "", ""], mode=0o600)
    for group in groups:
        _add_member(root, group, name, where)
    home_dir = root / home.lstrip("/")
    home_dir.mkdir(parents=True, exist_ok=True)
    os.chown(home_dir, uid, gid)
    home_dir.chmod(0o750)
    return uid, gid


def _ensure_group(root: Path, name: str, wanted: int) -> int:
    rows = _read(root / "etc/group")
    for row in rows:
        if row[0] == name:
            return int(row[2])
    taken = {int(r[2]) for r in rows if len(r) > 2 and r[2].isdigit()}
    gid = wanted
    while gid in taken:
        gid += 1
    rows.append([name, "x", str(gid), ""])
    _save(root / "etc/group", rows)
    return gid


def _add_member(root: Path, group: str, user: str, where: Where) -> None:
    rows = _read(root / "etc/group")
    for row in rows:
        if row[0] == group:
            members = [m for m in row[3].split(",") if m] if len(row) > 3 else []
            row[3:] = [",".join(sorted({*members, user}))]
            _save(root / "etc/group", rows)
            return
    raise where.error(f"user {user}: no group {group!r} in the image")


def add_ssh_key(root: Path, user: str, key: str, where: Where) -> None:
    row = next((r for r in _read(root / "etc/passwd") if r[0] == user), None)
    if row is None:
        raise where.error(f"sshkey: no user {user!r} (add it with `user --name={user}`)")
    uid, gid, home = int(row[2]), int(row[3]), row[5]
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    existing = keys.read_text().splitlines() if keys.is_file() else []
    if key not in existing:
        keys.write_text("".join(f"{k}\n" for k in [*existing, key]))
    for path, mode in ((ssh_dir, 0o700), (keys, 0o600)):
        os.chown(path, uid, gid)
        path.chmod(mode)


def set_timezone(root: Path, zone: str, where: Where) -> None:
    """/etc/localtime: the image's own zoneinfo when it has one, else a copy of the host's."""
    parts = zone.split("/")
    if not zone or ".." in parts or zone.startswith("/"):
        raise where.error(f"timezone {zone!r} is not a zone name such as Europe/Paris")
    localtime = root / "etc/localtime"
    localtime.unlink(missing_ok=True)
    if (root / "usr/share/zoneinfo" / zone).is_file():
        localtime.symlink_to(f"/usr/share/zoneinfo/{zone}")
    elif (ZONEINFO / zone).is_file():
        shutil.copyfile(ZONEINFO / zone, localtime)
    else:
        raise where.error(f"unknown timezone {zone!r} (not in {ZONEINFO})")
    (root / "etc/timezone").write_text(f"{zone}\n")


def enable_services(root: Path, enabled: Sequence[str], disabled: Sequence[str], where: Where,
                    log: BuildLog) -> None:
    if not enabled and not disabled:
        return
    if (root / "bin/systemctl").exists() or (root / "usr/bin/systemctl").exists():
        with chroot_ready(root):
            for verb, names in (("enable", enabled), ("disable", disabled)):
                if names:
                    log.run(["chroot", str(root), "systemctl", verb, *names], where,
                            f"systemctl {verb} {' '.join(names)}", env=chroot_env())
        return
    if not (root / "bin/busybox").exists():
        raise where.error("services: the image has neither systemd nor busybox; add "
                          "systemd-sysv to %packages")
    applets = set(subprocess.run([str(root / "bin/busybox"), "--list"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.split())
    for name in enabled:
        if not (root / "etc/init.d" / name).exists() and name not in applets:
            raise where.error(f"services: no /etc/init.d/{name} and no busybox applet {name!r}")
    listing = root / "etc/provisioner/services"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{n}\n" for n in enabled if n not in disabled))
    for name in enabled:
        script = root / "etc/init.d" / name
        if not script.exists():
            # A busybox daemon applet: a tiny init.d script keeps rcS uniform.
            script.write_text(f"#!/bin/sh\n[ \"$1\" = start ] && exec /bin/busybox {name}\n")
            script.chmod(0o755)
