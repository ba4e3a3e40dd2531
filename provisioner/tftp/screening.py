"""What the server does with a datagram on port 69, before any transfer exists.

`screen_request(data)` accepts a read request with a canonical path under the TFTP root, or
rejects it with a counter token and the ERROR to answer (or None to drop it silently):

- undecodable: ERROR 4 only if it looks like a request; random traffic gets no reply, so the
  server cannot be used to reflect datagrams at a spoofed source;
- a write request: ERROR 2, the server is read-only;
- any other opcode: dropped (it belongs to a transfer port, not to port 69);
- a path that would leave the root (paths.py): ERROR 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from provisioner.errors import MalformedPacket
from provisioner.tftp.packet import ErrorCode, ReadRequest, WriteRequest, decode, encode_error
from provisioner.tftp.paths import ForbiddenPath, canonical_path

__all__ = ["UNKNOWN_TID", "Accepted", "Rejected", "error_datagram", "screen_request"]


def error_datagram(code: int, message: str) -> bytes:
    """An ERROR datagram, e.g. ERROR 1 when the source does not exist, ERROR 0 when full."""
    return encode_error(code, message)


#: RFC 1350 section 4: the answer to a datagram from a TID that is not the transfer's peer.
UNKNOWN_TID: Final = error_datagram(ErrorCode.UNKNOWN_TID, "unknown transfer ID")


@dataclass(frozen=True, slots=True)
class Accepted:
    request: ReadRequest
    path: tuple[str, ...]  # canonical components under the TFTP root


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # counter token
    message: str
    datagram: bytes | None  # the ERROR to send back, or None to drop silently


def screen_request(data: bytes, *, strip_leading_slash: bool = True) -> Accepted | Rejected:
    """Decide what to do with a datagram that arrived on port 69."""
    try:
        packet = decode(data)
    except MalformedPacket as exc:
        # Answer only what looks like a request; random traffic gets no reply to reflect.
        looks_like_request = len(data) >= 2 and data[0] == 0 and data[1] in (1, 2)
        reply = error_datagram(ErrorCode.ILLEGAL_OPERATION, exc.message)
        return Rejected(exc.reason, exc.message, reply if looks_like_request else None)
    if isinstance(packet, WriteRequest):
        reply = error_datagram(ErrorCode.ACCESS_VIOLATION, "read-only server")
        return Rejected("write_request", "write request refused: read-only server", reply)
    if not isinstance(packet, ReadRequest):
        return Rejected("not_a_request", f"{type(packet).__name__} sent to the server port", None)
    try:
        path = canonical_path(packet.filename, strip_leading_slash=strip_leading_slash)
    except ForbiddenPath as exc:
        reply = error_datagram(ErrorCode.ACCESS_VIOLATION, exc.message)
        return Rejected(exc.reason, exc.message, reply)
    return Accepted(packet, path)
