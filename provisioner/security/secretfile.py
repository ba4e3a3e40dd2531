"""Reading a secret from a file: the etcd password and client key, a BMC password reference.

The rule is ssh's for private keys: a file that the group or others may read (or write) is
refused, because the secret is then no longer one. The caller says which error to raise, so
the message lands in its own surface (ConfigError for [store], PowerError for a node).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from provisioner.errors import ProvisionerError


def read_secret_file(path: Path, what: str, error: type[ProvisionerError]) -> bytes:
    """The file's bytes, after checking it is a regular file only its owner can read.

    `what` names the setting in messages ("[store] password_file"). Raises `error`.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; create it (mode 600) or fix the "
                    "setting") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if info.st_mode & 0o077:
        raise error(f"{what} {path} is accessible by group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):03o}); run `chmod 600 {path}`: a secret "
                    "others can read is no longer a secret")
    try:
        return path.read_bytes()
    except OSError as exc:
        user = os.environ.get("USER") or str(os.geteuid())
        raise error(f"{what} {path}: cannot read it as {user} ({exc.strerror}); it must be "
                    "owned by the user the service runs as") from None


def read_secret_text(path: Path, what: str, error: type[ProvisionerError]) -> str:
    """A password from a file: its text without the final newline; an empty one is refused."""
    raw = read_secret_file(path, what, error)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise error(f"{what} {path} is empty; put the password in it")
    return text
