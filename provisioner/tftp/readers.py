"""Where a transfer's blocks come from: the `Source` a session reads, cut into blocks.

The session asks its reader for the next block of `blksize` bytes; a shorter block (b"" at the
end) is the file's last. Two readers, one per RFC 1350 mode:

- octet: blocks cut from READAHEAD-sized reads of the source, so a file costs one pread per
  ~22 blocks of 1468 bytes instead of one per block;
- netascii (RFC 1350, RFC 764): converted, not refused: LF becomes CR LF and a bare CR becomes
  CR NUL, block by block as the file is read.
"""

from __future__ import annotations

from typing import Final, Protocol

from provisioner.tftp.packet import Mode

__all__ = ["READAHEAD", "BlockReader", "NetasciiReader", "OctetReader", "Source", "block_reader"]


class Source(Protocol):
    """File content for one transfer, implemented by the adapters in sources.py.

    `read` returns exactly `length` bytes unless the file ends first; a shorter result (b"" at
    the end) means end of file. The session reads sequentially, each byte once (READAHEAD bytes
    at a time in octet mode), and calls `close` exactly once when the transfer ends. `read` may
    raise OSError or a ProvisionerError: the transfer then fails with ERROR 0, it does not
    crash the server.
    """

    @property
    def size(self) -> int | None: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class BlockReader(Protocol):
    def next(self, length: int) -> bytes: ...


#: the octet reader asks the source for this much at a time (one read call, for a file one
#: pread system call, per ~22 blocks of 1468 bytes instead of one per block)
READAHEAD: Final = 32768


class OctetReader:
    """Sequential blocks cut from READAHEAD-sized reads of the source."""

    __slots__ = ("_chunk", "_eof", "_offset", "_position", "_source")

    def __init__(self, source: Source) -> None:
        self._source = source
        self._offset = 0  # of the source, after what was read into _chunk
        self._chunk = b""
        self._position = 0  # in _chunk, of the next block
        self._eof = False

    def next(self, length: int) -> bytes:
        position = self._position
        end = position + length
        chunk = self._chunk
        if end <= len(chunk):
            self._position = end
            return chunk[position:end]
        return self._refill(length)

    def _refill(self, length: int) -> bytes:
        rest = self._chunk[self._position :]
        if not self._eof:
            wanted = max(length, READAHEAD)
            data = self._source.read(self._offset, wanted)
            self._offset += len(data)
            self._eof = len(data) < wanted  # a short read is the end of the file
            rest += data
        block = rest[:length]
        self._chunk, self._position = rest, len(block)
        return block


class NetasciiReader:
    """RFC 764 NVT line endings; each byte maps on its own, so chunks convert independently."""

    __slots__ = ("_eof", "_offset", "_pending", "_source")

    def __init__(self, source: Source) -> None:
        self._source = source
        self._offset = 0
        self._pending = b""
        self._eof = False

    def next(self, length: int) -> bytes:
        while len(self._pending) < length and not self._eof:
            chunk = self._source.read(self._offset, length)
            self._offset += len(chunk)
            self._eof = not chunk
            # CR first, so the CRs that LF expansion adds are not expanded again.
            self._pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        block, self._pending = self._pending[:length], self._pending[length:]
        return block


def block_reader(source: Source, mode: Mode) -> BlockReader:
    return NetasciiReader(source) if mode is Mode.NETASCII else OctetReader(source)
