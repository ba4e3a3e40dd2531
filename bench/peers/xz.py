"""The compressor peer of the image builder: xz-utils' `xz`, all cores, the settings our
initramfs images use (CRC32 check: the kernel's xz decoder needs it; preset 6).

    subprocess.run(xz.argv(path), stdout=out, check=True, timeout=600)
"""

from __future__ import annotations

from pathlib import Path


def argv(path: Path) -> list[str]:
    return ["xz", "-T0", "--check=crc32", "-6", "-c", str(path)]
