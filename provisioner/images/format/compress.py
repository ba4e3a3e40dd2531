"""xz compression for initramfs images, always with a CRC32 check.

The kernel's initramfs unpacker (lib/decompress_unxz.c) accepts only CRC32 or no check: the
default CRC64 of xz and of Python's lzma makes it reject the image, so every stream written here
uses CRC32.

Big images use liblzma's multi-threaded encoder through the `lzma-mt` package (faster than `xz
-T0` in the same run, and no subprocess). Its output depends only on the block size, never on the
thread count, because each block is compressed on its own: the block size is liblzma's default
for the preset (3 x dictionary size, 24 MiB at preset 6) and the multi-threaded encoder is used
even when one thread is asked for, so any machine builds the same bytes. Small overlays use the
stdlib's single-threaded lzma (`xz_bytes`), which has no thread start-up cost.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import lzma_mt

CHUNK = 4 * 1024 * 1024


def _mt_threads(threads: int) -> int:
    """Thread count for lzma_mt: 0 = one per CPU; 1 would select the single-threaded encoder,
    whose stream layout differs, so it is raised to 2 to keep the bytes independent of threads."""
    if threads < 0:
        raise ValueError("threads must be >= 0")
    return 2 if threads == 1 else threads


def compressor(*, threads: int = 0, preset: int = 6) -> lzma_mt.LZMACompressor:
    """A multi-threaded xz compressor with a CRC32 check (feed it with compress(), then flush())."""
    return lzma_mt.LZMACompressor(format=lzma_mt.FORMAT_XZ, check=lzma_mt.CHECK_CRC32,
                                  preset=preset, threads=_mt_threads(threads))


def xz_compress(src: Path | bytes, dst: Path | None = None, *, threads: int = 0,
                preset: int = 6) -> bytes | None:
    """xz-compress `src` (a file, read in chunks, or bytes) with CRC32.

    With `dst` the stream is written to `dst` (via a temporary file renamed into place, so a
    failure such as a full disk never leaves a truncated file) and None is returned; without it,
    the compressed bytes are returned.
    """
    comp = compressor(threads=threads, preset=preset)
    if dst is None:
        buf = io.BytesIO()
        _feed(src, buf, comp)
        return buf.getvalue()
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            _feed(src, out, comp)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return None


def _feed(src: Path | bytes, out: BinaryIO, comp: lzma_mt.LZMACompressor) -> None:
    if isinstance(src, bytes):
        out.write(comp.compress(src))
    else:
        with src.open("rb") as f:
            while chunk := f.read(CHUNK):
                out.write(comp.compress(chunk))
    out.write(comp.flush())


class XzSink:
    """A write-only file that xz-compresses what it is given (see `xz_writer`).

    Counts what goes in and out and hashes the compressed bytes, so a builder can stream
    `archive.write_tree` straight into the image file and fill the manifest without re-reading.
    """

    def __init__(self, raw: BinaryIO, comp: lzma_mt.LZMACompressor) -> None:
        self._raw = raw
        self._comp = comp
        self._pending = bytearray()  # small writes (cpio headers) are batched for liblzma
        self.bytes_in = 0
        self.bytes_out = 0
        self.sha256 = hashlib.sha256()  # of the compressed stream

    def write(self, data: bytes, /) -> int:
        self.bytes_in += len(data)
        self._pending += data
        if len(self._pending) >= CHUNK:
            self._emit(self._comp.compress(bytes(self._pending)))
            self._pending.clear()
        return len(data)

    def _emit(self, out: bytes) -> None:
        if out:
            self._raw.write(out)
            self.bytes_out += len(out)
            self.sha256.update(out)

    def finish(self) -> None:
        self._emit(self._comp.compress(bytes(self._pending)) + self._comp.flush())
        self._pending.clear()


@contextmanager
def xz_writer(dst: Path, *, threads: int = 0, preset: int = 6) -> Iterator[XzSink]:
    """Open `dst` for streaming xz (CRC32) output; it appears under its name only on success."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as raw:
            sink = XzSink(raw, compressor(threads=threads, preset=preset))
            yield sink
            sink.finish()
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def xz_bytes(data: bytes, *, preset: int = 6) -> bytes:
    """Small payloads (per-node overlays): single-threaded stdlib lzma, CRC32, one block."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=preset)


def xz_decompress(data: bytes) -> bytes:
    """Decompress one or more concatenated xz streams (for tests and verification)."""
    return lzma.decompress(data, format=lzma.FORMAT_XZ)
