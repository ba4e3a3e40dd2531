"""Canonical TFTP filenames: the pure half of confinement to the TFTP root (DESIGN.md section 6).

`canonical_path(filename)` turns what a client asked for into path components relative to the
root, or raises `ForbiddenPath`, which the server answers with ERROR 2 (access violation). It
checks component by component and never touches the filesystem:

- NUL, control characters (C0 and DEL) and non-ASCII characters are refused: no boot file we
  serve needs them, and they are how log injection and encoding tricks get in.
- A backslash is a separator (Windows-built boot loaders such as WDS's wdsnbp.com ask for
  `boot\\x64\\...`), so `..\\` is caught as the `..` component it is.
- `..` is refused anywhere, even where it would stay inside the root (`a/../b`): a client that
  sends it is probing, and refusing is simpler to audit than resolving.
- `.` and empty components (`a//b`, a trailing `/`) collapse.
- A leading separator is stripped by default: DHCP bootfile options and PXELINUX/GRUB configs
  often say `/pxelinux.0` or `/boot/grub/...` meaning "from the TFTP root", which is how
  tftp-hpa in its usual `--secure` mode (chroot to the root) reads them. Such a path still
  never leaves the root.
  Pass `strip_leading_slash=False` to refuse absolute paths instead. A drive letter (`C:`) or a
  UNC prefix (`\\\\host\\share`) is always refused.

Symlinks that lead out of the root are not visible here: the file source adapter (sources.py)
must open component by component (O_NOFOLLOW / resolve-and-compare) and refuse them.
"""

from __future__ import annotations

from typing import Final

from provisioner.errors import ProtocolError

__all__ = ["ForbiddenPath", "canonical_path"]

#: Linux NAME_MAX and a generous bound on the whole name; a TFTP request is 512 bytes anyway.
MAX_COMPONENT: Final = 255
MAX_PATH: Final = 1024


class ForbiddenPath(ProtocolError):
    """The requested filename is not allowed; ask for a plain path inside the TFTP root."""

    def __init__(self, message: str | None = None, *, reason: str = "forbidden") -> None:
        super().__init__(message)
        #: A short, stable token for counters ("parent", "absolute", "control", ...).
        self.reason = reason


def canonical_path(filename: str, *, strip_leading_slash: bool = True) -> tuple[str, ...]:
    """The components of `filename` relative to the TFTP root, or raise `ForbiddenPath`."""
    _check_characters(filename)
    path = filename.replace("\\", "/")
    if path.startswith("//"):
        raise ForbiddenPath(f"{filename!r} is a network (UNC) path", reason="absolute")
    if path.startswith("/"):
        if not strip_leading_slash:
            raise ForbiddenPath(f"{filename!r} is an absolute path", reason="absolute")
        path = path[1:]
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if not parts:
        raise ForbiddenPath(f"{filename!r} names no file", reason="empty")
    if _is_drive(parts[0]):
        raise ForbiddenPath(f"{filename!r} starts with a drive letter", reason="absolute")
    for part in parts:
        if part == "..":
            raise ForbiddenPath(f"{filename!r} leads to a parent directory", reason="parent")
        if len(part) > MAX_COMPONENT:
            raise ForbiddenPath(f"a component of {filename[:40]!r}... is too long", reason="long")
    return parts


def _check_characters(filename: str) -> None:
    if len(filename) > MAX_PATH:
        raise ForbiddenPath(f"filename {filename[:40]!r}... is too long", reason="long")
    if not filename.isascii():
        raise ForbiddenPath(f"filename {filename!r} is not ASCII", reason="not_ascii")
    for char in filename:
        if char < " " or char == "\x7f":
            raise ForbiddenPath(
                f"filename {filename!r} contains a control character", reason="control"
            )


def _is_drive(part: str) -> bool:
    # "C:" and the drive-relative "C:boot.ini" alike; MAC-style names ("aa:bb:..") do not match.
    return len(part) >= 2 and part[1] == ":" and part[0].isalpha()
