"""TFTP packets: a strict, sans-IO codec for RFC 1350 and the RFC 2347 OACK.

`decode(data)` returns one of the frozen packet classes below or raises `MalformedPacket`, and
nothing else, whatever the bytes: the server counts `exc.reason` and answers or drops. The
`encode_*` functions build datagrams with precompiled structs; `encode_data` and `encode_ack` are
on the per-block hot path and do no validation beyond what `struct` does.

Choices, each forced by a client or an RFC:

- Filenames must be ASCII (RFC 1350 says netascii). Anything else is `reason="not_ascii"`, so the
  server answers ERROR and keeps serving (tftpy 0.8.7 died on such a datagram).
- Option names are case-insensitive (RFC 2347) and are lower-cased here. Option names and values
  are decoded as latin-1, never failing: an option we cannot read is merely unknown or out of
  range, and the session leaves it out of the OACK instead of refusing a servable request.
- Trailing NUL padding after the last option is tolerated (cheap insurance against padded
  requests), an ACK
  longer than 4 bytes is read as its first 4, and an ERROR without its terminating NUL keeps its
  message: refusing those would only turn a working transfer into a failed one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

from provisioner.errors import LocalProtocolError, MalformedPacket

__all__ = [
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Mode",
    "Opcode",
    "OptionAck",
    "Options",
    "Packet",
    "ReadRequest",
    "WriteRequest",
    "decode",
    "encode",
    "encode_ack",
    "encode_data",
    "encode_error",
    "encode_oack",
    "encode_request",
]


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6  # RFC 2347


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347


class Mode(StrEnum):
    # RFC 1350 "mail" is obsolete; no client we serve sends it, so it decodes as bad_mode.
    NETASCII = "netascii"
    OCTET = "octet"


#: Options in the order the peer sent them, names lower-cased.
Options = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    filename: str
    mode: Mode = Mode.OCTET
    options: Options = ()

    def option(self, name: str) -> str | None:
        """The value of option `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.options if k == name), None)


@dataclass(frozen=True, slots=True)
class WriteRequest:
    filename: str
    mode: Mode = Mode.OCTET
    options: Options = ()


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: Options


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck

_HEADER: Final = struct.Struct("!HH")  # opcode + block number / error code
_OPCODE: Final = struct.Struct("!H")
_MAX_BLOCK: Final = 0xFFFF
# Plain ints: comparing with IntEnum members costs a method call on the per-datagram path.
_ACK: Final = int(Opcode.ACK)
_ERROR: Final = int(Opcode.ERROR)
_OACK: Final = int(Opcode.OACK)
_RRQ: Final = int(Opcode.RRQ)
_BLOCK_OPCODES: Final = frozenset((int(Opcode.DATA), _ACK))
_REQUEST_OPCODES: Final = frozenset((_RRQ, int(Opcode.WRQ)))


def decode(data: bytes) -> Packet:
    """Decode one datagram; raise `MalformedPacket` (and only that) if it is not TFTP."""
    if len(data) < 2:
        raise MalformedPacket(f"{len(data)}-byte datagram is too short for TFTP", reason="short")
    opcode = (data[0] << 8) | data[1]
    if opcode in _BLOCK_OPCODES:
        if len(data) < 4:
            raise MalformedPacket("DATA/ACK without a block number", reason="short")
        block = (data[2] << 8) | data[3]
        return Ack(block) if opcode == _ACK else Data(block, bytes(data[4:]))
    if opcode in _REQUEST_OPCODES:
        return _decode_request(opcode, data)
    if opcode == _ERROR:
        return _decode_error(data)
    if opcode == _OACK:
        # An OACK without options is pointless but harmless; decode it so encode() round-trips.
        return OptionAck(_decode_options(_fields(data[2:])) if len(data) > 2 else ())
    raise MalformedPacket(f"unknown TFTP opcode {opcode}", reason="opcode")


def _fields(body: bytes) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise MalformedPacket("string field is not NUL-terminated", reason="no_nul")
    return body[:-1].split(b"\0")


def _decode_request(opcode: int, data: bytes) -> ReadRequest | WriteRequest:
    fields = _fields(data[2:])
    if len(fields) < 2:
        raise MalformedPacket("request without a mode", reason="no_nul")
    try:
        filename = fields[0].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPacket("filename is not ASCII", reason="not_ascii") from None
    try:
        mode = Mode(fields[1].decode("latin-1").lower())
    except ValueError:
        message = "transfer mode must be octet or netascii"
        raise MalformedPacket(message, reason="bad_mode") from None
    options = _decode_options(fields[2:])
    if opcode == _RRQ:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def _decode_options(fields: list[bytes]) -> Options:
    options: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i in range(0, len(fields), 2):
        if not fields[i]:
            if any(fields[i:]):
                raise MalformedPacket("empty option name", reason="empty_option")
            break  # trailing NUL padding
        if i + 1 == len(fields):
            raise MalformedPacket(f"option {fields[i]!r} has no value", reason="odd_options")
        name = fields[i].decode("latin-1").lower()
        if name in seen:
            raise MalformedPacket(f"option {name!r} given twice", reason="duplicate_option")
        seen.add(name)
        options.append((name, fields[i + 1].decode("latin-1")))
    return tuple(options)


def _decode_error(data: bytes) -> Error:
    if len(data) < 4:
        raise MalformedPacket("ERROR without an error code", reason="short")
    code = (data[2] << 8) | data[3]
    message = data[4:].split(b"\0", 1)[0]
    return Error(code, message.decode("ascii", "replace"))


def encode_data(block: int, payload: bytes) -> bytes:
    """DATA datagram; `block` must already be reduced modulo 65536."""
    return _HEADER.pack(Opcode.DATA, block) + payload


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(Opcode.ACK, block)


def encode_error(code: int, message: str) -> bytes:
    """ERROR datagram; the message is made ASCII and NUL-free so any client can print it."""
    text = message.replace("\0", " ").encode("ascii", "replace")
    return _HEADER.pack(Opcode.ERROR, code) + text + b"\0"


def encode_oack(options: Options) -> bytes:
    return _OPCODE.pack(Opcode.OACK) + _encode_options(options)


def encode_request(
    opcode: Opcode, filename: str, mode: Mode = Mode.OCTET, options: Options = ()
) -> bytes:
    _check_string(filename)
    if not filename.isascii():
        raise LocalProtocolError(f"TFTP filename {filename!r} is not ASCII")
    head = _OPCODE.pack(opcode) + filename.encode("ascii") + b"\0"
    return head + mode.value.encode() + b"\0" + _encode_options(options)


def _encode_options(options: Options) -> bytes:
    for name, value in options:
        if not name:
            raise LocalProtocolError("TFTP option names cannot be empty")
        _check_string(name)
        _check_string(value)
    return b"".join(f"{name}\0{value}\0".encode("latin-1") for name, value in options)


def _check_string(text: str) -> None:
    if "\0" in text or any(ord(c) > 0xFF for c in text):
        raise LocalProtocolError(f"TFTP string {text!r} contains NUL or a non-latin-1 character")


def _check_number(value: int) -> None:
    if not 0 <= value <= _MAX_BLOCK:
        raise LocalProtocolError(f"TFTP block number or code {value} is outside 0..65535")


def encode(packet: Packet) -> bytes:
    """Encode any packet, validating it; raises `LocalProtocolError` for an impossible one."""
    match packet:
        case ReadRequest(filename, mode, options):
            return encode_request(Opcode.RRQ, filename, mode, options)
        case WriteRequest(filename, mode, options):
            return encode_request(Opcode.WRQ, filename, mode, options)
        case Data(block, data):
            _check_number(block)
            return encode_data(block, data)
        case Ack(block):
            _check_number(block)
            return encode_ack(block)
        case Error(code, message):
            _check_number(code)
            return encode_error(code, message)
        case OptionAck(options):
            return encode_oack(options)
    raise LocalProtocolError(f"not a TFTP packet: {packet!r}")
