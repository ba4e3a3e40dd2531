"""Give up root once the ports are bound: run as the service user with two capabilities.

`provisioner serve` starts as root because DHCP (67), TFTP (69) and HTTP (80) are privileged
ports and DHCP replies to clients without an address go out on an AF_PACKET socket. Once those
sockets are open, nothing else needs root, and a process that parses packets from a network
shared with users' jobs should not hold it. `drop_to(user)`:

1. hands what the appliance writes to the user: the data directory itself, the store's files,
   the image and TFTP trees (not the build cache: image rootfs trees may hold setuid files,
   and a chown clears their setuid bits);
2. keeps capabilities across the uid change (prctl PR_SET_KEEPCAPS, capabilities(7));
3. drops supplementary groups, then sets the gid and uid (so no way back to root);
4. narrows the capability sets to CAP_NET_BIND_SERVICE (the API may rebind) and CAP_NET_RAW
   (the AF_PACKET replies), and sets no_new_privs so nothing it runs can gain more.

Linux's capset(2) works per thread; threads that exist at the drop lose every capability with
the uid change (they did not set KEEPCAPS), and threads started later inherit the loop
thread's narrowed set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from provisioner.errors import ConfigError

log = logging.getLogger(__name__)

CAP_NET_BIND_SERVICE: Final = 10
CAP_NET_RAW: Final = 13
KEPT: Final = (CAP_NET_BIND_SERVICE, CAP_NET_RAW)
PR_SET_KEEPCAPS: Final = 8
PR_SET_NO_NEW_PRIVS: Final = 38
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def service_account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"[service] user {user!r} does not exist: create it with `useradd "
                          f"--system --no-create-home {user}` (scripts/setup.sh does), or set "
                          "[service] user = \"\" to keep running as the user who started "
                          "provisioner") from None


def hand_over(files: Sequence[Path], trees: Sequence[Path], uid: int, gid: int) -> None:
    """Make `files` and everything under `trees` the service user's (modes are kept)."""
    entries = [*files, *trees]
    for tree in trees:
        if tree.is_dir():
            entries.extend(tree.rglob("*"))
    for entry in entries:
        if entry.exists() and not entry.is_symlink():
            os.chown(entry, uid, gid)


def tighten(data_dir: Path, files: Sequence[Path], trees: Sequence[Path]) -> None:
    """The data dir 0700, the store's files 0600, and no group or other bits under the image
    and TFTP trees: they hold power passwords, token hashes and what nodes boot. New files are
    private through the umask (`private_umask`); this mends what an older release, a copy that
    kept its mode, or a hand left open. (Not the build cache: rootfs trees keep their modes.)"""
    if data_dir.is_dir():
        data_dir.chmod(0o700)
    entries = [*files]
    for tree in trees:
        if tree.is_dir():
            entries.extend([tree, *tree.rglob("*")])
    for path in entries:
        if path.exists() and not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)


def private_umask() -> None:
    """Everything created from now on is readable by its owner only."""
    os.umask(0o077)


def drop_to(user: str, files: Sequence[Path], trees: Sequence[Path]) -> None:
    """From root to `user`, keeping only KEPT. A no-op (logged) when not started as root."""
    if os.geteuid() != 0:
        log.info("running as uid %d already; [service] user %r not applied", os.geteuid(), user)
        return
    account = service_account(user)
    hand_over(files, trees, account.pw_uid, account.pw_gid)
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    mask = sum(1 << cap for cap in KEPT)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, 0), _CapData(0, 0, 0))
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    log.info("running as %s (uid %d), keeping only CAP_NET_BIND_SERVICE and CAP_NET_RAW",
             user, account.pw_uid)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
