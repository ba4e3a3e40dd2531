"""The files the file-serving benchmarks send: random bytes (nothing compressible, nothing cached
elsewhere) written once, and their sha256 to check every transfer against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 4 << 20


def make_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`, world-readable (nginx's worker is not root); the sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left:
            data = os.urandom(min(left, CHUNK))
            digest.update(data)
            handle.write(data)
            left -= len(data)
    path.chmod(0o644)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()
