"""xz with CRC32 (the kernel rejects CRC64), checked with the real `xz` tool."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from provisioner.images.format import compress


def _sample(size: int, seed: int = 7) -> bytes:
    """Compressible but not trivial data: random words from a small vocabulary."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def _xz_list(path: Path) -> dict[str, list[str]]:
    """`xz --robot --list` lines keyed by their first column (stream, block, totals, ...)."""
    out = subprocess.run(["xz", "--robot", "--list", "-vv", str(path)], capture_output=True,
                         text=True, check=True).stdout
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        rows.setdefault(cols[0], []).append("\t".join(cols[1:]))
    return rows


def _check_names(path: Path) -> set[str]:
    totals = _xz_list(path)["totals"][0].split("\t")
    return set(totals[5].split(","))  # column 6 of "totals": the checks used


@pytest.mark.parametrize("how", ["bytes", "path"])
def test_xz_compress_uses_crc32_and_xz_verifies_it(tmp_path: Path, how: str) -> None:
    data = _sample(3 * 1024 * 1024)
    src = tmp_path / "in.cpio"
    src.write_bytes(data)
    dst = tmp_path / "out.xz"
    assert compress.xz_compress(data if how == "bytes" else src, dst, preset=1) is None
    assert _check_names(dst) == {"CRC32"}
    subprocess.run(["xz", "-t", str(dst)], check=True)
    assert subprocess.run(["xz", "-dc", str(dst)], capture_output=True, check=True).stdout == data
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_xz_compress_returns_bytes_without_dst(tmp_path: Path) -> None:
    data = _sample(200_000)
    src = tmp_path / "in"
    src.write_bytes(data)
    from_path = compress.xz_compress(src, preset=1)
    assert from_path is not None and compress.xz_decompress(from_path) == data
    assert from_path == compress.xz_compress(data, preset=1)


def test_output_does_not_depend_on_thread_count(tmp_path: Path) -> None:
    # preset 1: 1 MiB dictionary -> 3 MiB blocks, so 10 MiB makes four blocks.
    data = _sample(10 * 1024 * 1024)
    outputs = {t: compress.xz_compress(data, threads=t, preset=1) for t in (0, 1, 2, 3)}
    assert len(set(outputs.values())) == 1
    path = tmp_path / "x.xz"
    path.write_bytes(outputs[0] or b"")
    assert len(_xz_list(path)["block"]) == 4


def test_xz_bytes_is_small_single_block_crc32(tmp_path: Path) -> None:
    data = b"hostname=node01\n" * 100
    out = compress.xz_bytes(data)
    assert len(out) % 4 == 0, "xz streams are 4-byte padded so a concatenated cpio stays aligned"
    path = tmp_path / "o.xz"
    path.write_bytes(out)
    assert _check_names(path) == {"CRC32"}
    assert len(_xz_list(path)["block"]) == 1
    assert compress.xz_decompress(out) == data


def test_failed_compression_leaves_no_file(tmp_path: Path) -> None:
    dst = tmp_path / "out.xz"
    with pytest.raises(FileNotFoundError):
        compress.xz_compress(tmp_path / "missing", dst)
    assert list(tmp_path.iterdir()) == []


def test_xz_writer_streams_a_tree_and_counts(tmp_path: Path) -> None:
    from provisioner.images.format import archive
    (tmp_path / "t/etc").mkdir(parents=True)
    (tmp_path / "t/etc/big").write_bytes(_sample(2_500_000))
    dst = tmp_path / "image.cpio.xz"
    with compress.xz_writer(dst, preset=1) as sink:
        cpio_size = archive.write_tree(tmp_path / "t", sink)
    plain = tmp_path / "image.cpio"
    assert archive.write_tree_file(tmp_path / "t", plain) == cpio_size == sink.bytes_in
    assert dst.read_bytes() == compress.xz_compress(plain, preset=1)
    assert sink.bytes_out == dst.stat().st_size
    assert sink.sha256.hexdigest() == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert _check_names(dst) == {"CRC32"}


def test_xz_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dst = tmp_path / "image.cpio.xz"
    with pytest.raises(RuntimeError), compress.xz_writer(dst) as sink:
        sink.write(b"partial")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
