"""Files of an image version: checksums, the xz check type, a bzImage's release, and removing
a staging tree without ever following a mount point out of it."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, BinaryIO

from provisioner.errors import ImageError

FILES = ("vmlinuz", "image.cpio.xz")
_XZ_MAGIC = b"\xfd7zXZ\x00"
_CHECK_NAMES = {0: "none", 1: "CRC32", 4: "CRC64", 10: "SHA-256"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    """The manifest's "files": sha256 and size of vmlinuz and image.cpio.xz."""
    return {file: {"sha256": sha256_file(directory / file),
                   "size": (directory / file).stat().st_size,
                   **({"cpio_size": xz_uncompressed_size(directory / file)}
                      if file == "image.cpio.xz" else {})}
            for file in FILES}


def xz_uncompressed_size(path: Path) -> int | None:
    """Bytes of the archive inside an xz file, or None when it is not xz."""
    with path.open("rb") as handle:
        if handle.read(6) != _XZ_MAGIC:
            return None
        handle.seek(0)
        return _count_decompressed(handle)


def _count_decompressed(handle: BinaryIO) -> int | None:
    total = 0
    decoder = lzma.LZMADecompressor()
    try:
        while chunk := handle.read(1 << 20):
            # Concatenated streams (and their 4-byte padding) are legal in an initramfs.
            while chunk:
                if decoder.eof:
                    chunk = chunk.lstrip(b"\0")
                    if not chunk:
                        break
                    decoder = lzma.LZMADecompressor()
                total += len(decoder.decompress(chunk))
                chunk = decoder.unused_data
    except lzma.LZMAError:
        return None
    return total


def refuse_crc64(initrd: Path) -> None:
    # The kernel's initramfs unpacker only knows CRC32 (and none); a CRC64 xz fails at boot with
    # "XZ-compressed data is corrupt", far from the cause. Refuse at import instead.
    with initrd.open("rb") as handle:
        head = handle.read(8)
    if head[:6] == _XZ_MAGIC and head[7] & 0x0F not in (0, 1):
        check = _CHECK_NAMES.get(head[7] & 0x0F, "unknown")
        raise ImageError(f"{initrd}: xz with a {check} check, which the kernel cannot unpack; "
                         "recompress with `xz --check=crc32`")


def kernel_release(vmlinuz: Path) -> str:
    """The release string in a bzImage's setup header (boot protocol 2.00+), or 'unknown'."""
    try:
        with vmlinuz.open("rb") as handle:
            head = handle.read(0x10000)
    except OSError:
        return "unknown"
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return "unknown"
    offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    text = head[offset:offset + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0] or "unknown"


def remove_tree(path: Path) -> None:
    """rmtree that never follows a mount point out of `path` (a staging rootfs may have had
    /proc mounted in it): mounts still under it are detached first."""
    if not path.exists() and not path.is_symlink():
        return
    for mount in mounts_under(path):
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=60, check=False)
    if mounts_under(path):
        raise ImageError(f"{path}: still has mounts under it; unmount them and remove it")
    shutil.rmtree(path, ignore_errors=True)


def mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[4].encode().decode("unicode_escape") for line in lines]
    return sorted((p for p in points if p == real or p.startswith(real + "/")), reverse=True)
