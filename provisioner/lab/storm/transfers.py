"""A simulated node's transfers, from its own leased address: a TFTP read (RFC 1350 with the
blksize, tsize and windowsize options of RFC 2348/2349/7440, as UEFI PXE firmware asks) and
HTTP/1.1 requests (a connection each, as iPXE and busybox wget make them).

Every byte is read: a body counts only when its length is the Content-Length (and the TFTP
file's the tsize the server announced), so a short or cut transfer is a failure, not a fast
one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from provisioner.errors import MalformedPacket
from provisioner.tftp import packet as tftp

TFTP_BLKSIZE: Final = 1468  # what EDK2's PXE asks on a 1500-byte link
TFTP_WINDOW: Final = 4  # EDK2's PXE asks windowsize 4 (RFC 7440) where the server offers it
TFTP_TIMEOUT: Final = 1.0  # the first retransmission of an ACK; doubled at each
TFTP_ATTEMPTS: Final = 6
HTTP_TIMEOUT: Final = 120.0  # a whole request, connection to last byte
CHUNK: Final = 1 << 18


class FetchFailed(Exception):
    pass


class _TftpReader(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait((data, addr))


async def tftp_read(source: str, server: str, filename: str, retried: list[int]) -> int:
    """Read `filename` from `server` port 69, lock-step; returns the bytes received.
    `retried[0]` counts retransmissions (of the request or of an ACK)."""
    loop = asyncio.get_running_loop()
    transport, reader = await loop.create_datagram_endpoint(_TftpReader,
                                                            local_addr=(source, 0))
    try:
        return await _tftp_session(transport, reader, server, filename, retried)
    finally:
        transport.close()


async def _tftp_session(transport: asyncio.DatagramTransport, reader: _TftpReader, server: str,
                        filename: str, retried: list[int]) -> int:
    request = tftp.encode_request(tftp.Opcode.RRQ, filename, tftp.Mode.OCTET,
                                  (("blksize", str(TFTP_BLKSIZE)), ("tsize", "0"),
                                   ("windowsize", str(TFTP_WINDOW))))
    last, peer = request, (server, 69)
    send: bytes | None = request
    blksize, window, size, expected, received, unacked = 512, 1, -1, 1, 0, 0
    while True:
        answer, addr = await _tftp_next(transport, reader, send, last, peer=peer,
                                              retried=retried)
        send = None
        if peer[1] == 69:
            peer = addr  # the server's transfer ID (RFC 1350 section 4)
        match answer:
            case tftp.OptionAck(options):
                given = dict(options)  # what the server granted (RFC 2347)
                blksize = int(given.get("blksize", "512"))
                window = int(given.get("windowsize", "1"))
                size = int(given.get("tsize", "-1"))
                last = send = tftp.encode_ack(0)
            case tftp.Data(block, data) if block == expected & 0xFFFF:
                received += len(data)
                expected += 1
                unacked += 1
                if len(data) < blksize:
                    transport.sendto(tftp.encode_ack(block), peer)
                    break
                if unacked >= window:  # RFC 7440: one ACK per window
                    last = send = tftp.encode_ack(block)
                    unacked = 0
            case tftp.Data():
                continue  # out of order or a duplicate: the timeout re-sends the last ACK
            case tftp.Error(code, message):
                raise FetchFailed(f"TFTP error {code}: {message}")
    if size >= 0 and received != size:
        raise FetchFailed(f"TFTP {filename}: {received} bytes, tsize said {size}")
    return received


async def _tftp_next(transport: asyncio.DatagramTransport, reader: _TftpReader,
                     send: bytes | None, last: bytes, *, peer: tuple[str, int],
                     retried: list[int]) -> tuple[tftp.Packet, tuple[str, int]]:
    """Send `send` (if any), then the next packet from the server; `last` (the request or
    the last ACK) again at each timeout."""
    timeout = TFTP_TIMEOUT
    if send is not None:
        transport.sendto(send, peer)
    for _ in range(TFTP_ATTEMPTS):
        try:
            data, addr = await asyncio.wait_for(reader.inbox.get(), timeout)
        except TimeoutError:
            retried[0] += 1
            transport.sendto(last, peer)
            timeout *= 2
            continue
        try:
            return tftp.decode(data), addr
        except MalformedPacket as exc:
            raise FetchFailed(f"TFTP: {exc}") from None
    raise FetchFailed(f"TFTP: no answer after {TFTP_ATTEMPTS} tries")


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: int = 0  # bytes of body read (all of them, kept or not)


async def http(method: str, url: str, *, source: str, headers: dict[str, str] | None = None,
               body: bytes = b"", keep: bool = True) -> HttpReply:
    """One request on a fresh connection from address `source`. `keep`: keep the body (else
    only count it: a 64 MiB image is read, not stored)."""
    return await asyncio.wait_for(_http(method, url, source, headers=headers or {}, body=body,
                                        keep=keep),
                                  HTTP_TIMEOUT)


async def _http(method: str, url: str, source: str, *, headers: dict[str, str], body: bytes,
                keep: bool) -> HttpReply:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = await _read_head(reader)
        await _read_body(reader, answer, keep)
        return answer
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> HttpReply:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    answer = HttpReply(int(status_line.split()[1]))
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            answer.headers[name.strip().lower()] = value.strip()
    return answer


async def _read_body(reader: asyncio.StreamReader, answer: HttpReply, keep: bool) -> None:
    length = answer.headers.get("content-length")
    if answer.headers.get("transfer-encoding", "").lower() == "chunked":
        raise FetchFailed("chunked answer (the boot plane sends Content-Length)")
    want = int(length) if length is not None else -1
    parts: list[bytes] = []
    while want < 0 or answer.length < want:
        chunk = await reader.read(CHUNK if want < 0 else min(CHUNK, want - answer.length))
        if not chunk:
            break
        answer.length += len(chunk)
        if keep:
            parts.append(chunk)
    if want >= 0 and answer.length != want:
        raise FetchFailed(f"{answer.length} of {want} bytes before the connection closed")
    answer.body = b"".join(parts)
