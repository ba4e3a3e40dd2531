"""DHCP option codes and typed codecs for option values.

Rules of this file: layer 0, pure. Packets keep every option as raw bytes (so unknown options
round-trip untouched); these helpers turn the few we interpret into typed values and back.
A decoder given bytes that do not fit the option's RFC format raises `MalformedPacket` with a
stable `reason` token; an encoder given a value our own code should never build raises
`LocalProtocolError`.

Sources: RFC 2132 (codes, formats), RFC 3004 (user class), RFC 3046 (relay agent information),
RFC 4578 (PXE options 93, 94, 97), RFC 3396 (long options, handled in packet.py), iPXE (175).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from provisioner.errors import LocalProtocolError, MalformedPacket

IPv4 = ipaddress.IPv4Address


class Opt(enum.IntEnum):
    """Option codes we name (RFC 2132 unless noted). Any other code is kept as raw bytes."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DOMAIN_NAME_SERVER = 6
    HOST_NAME = 12
    DOMAIN_NAME = 15
    INTERFACE_MTU = 26
    BROADCAST_ADDRESS = 28
    NTP_SERVERS = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS_ID = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77  # RFC 3004
    RELAY_AGENT_INFO = 82  # RFC 3046
    CLIENT_ARCH = 93  # RFC 4578 section 2.1
    CLIENT_NDI = 94  # RFC 4578 section 2.2
    CLIENT_UUID = 97  # RFC 4578 section 2.3
    IPXE_ENCAP = 175  # iPXE: encapsulated iPXE options, present only when the client is iPXE
    END = 255


class MessageType(enum.IntEnum):
    """Option 53 values: RFC 2132 section 9.6, then RFC 3203 (9) and RFC 4388/6926/7724."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8
    FORCERENEW = 9
    LEASEQUERY = 10
    LEASEUNASSIGNED = 11
    LEASEUNKNOWN = 12
    LEASEACTIVE = 13
    BULKLEASEQUERY = 14
    LEASEQUERYDONE = 15
    ACTIVELEASEQUERY = 16
    LEASEQUERYSTATUS = 17
    TLS = 18


#: Index by the option 53 byte; None for values no RFC assigns (decode refuses those).
_BY_VALUE: Final = {m.value: m for m in MessageType}
MESSAGE_TYPES: Final[tuple[MessageType | None, ...]] = tuple(_BY_VALUE.get(v) for v in range(256))

#: Types only a server sends (RFC 2131 section 3.1, table 2).
SERVER_TYPES: Final = frozenset({MessageType.OFFER, MessageType.ACK, MessageType.NAK})

#: RFC 4578 section 2.1 and the IANA "Processor Architecture Types" registry.
ARCH_X86_BIOS: Final = 0
ARCH_EFI_IA32: Final = 6
ARCH_EFI_BC: Final = 7  # RFC 4578 says "EFI BC", errata 4624: it is x86-64 in practice
ARCH_EFI_X86_64: Final = 9
ARCH_EFI_ARM32: Final = 10
ARCH_EFI_ARM64: Final = 11
ARCH_HTTP_IA32: Final = 15
ARCH_HTTP_X86_64: Final = 16
ARCH_HTTP_ARM64: Final = 19

#: Relay agent sub-options, RFC 3046 section 3.
AGENT_CIRCUIT_ID: Final = 1
AGENT_REMOTE_ID: Final = 2

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")


def _bad(code: int, why: str) -> MalformedPacket:
    return MalformedPacket(f"option {code}: {why}", reason=f"bad_option{code}")


# -- integers -------------------------------------------------------------------------------


def decode_u8(raw: bytes, code: int = 0) -> int:
    if len(raw) != 1:
        raise _bad(code, f"needs 1 byte, got {len(raw)}")
    return raw[0]


def decode_u16(raw: bytes, code: int = 0) -> int:
    if len(raw) != 2:
        raise _bad(code, f"needs 2 bytes, got {len(raw)}")
    value: int = _U16.unpack(raw)[0]
    return value


def decode_u32(raw: bytes, code: int = 0) -> int:
    if len(raw) != 4:
        raise _bad(code, f"needs 4 bytes, got {len(raw)}")
    value: int = _U32.unpack(raw)[0]
    return value


def encode_u8(value: int) -> bytes:
    return _encode_int(value, 1)


def encode_u16(value: int) -> bytes:
    return _encode_int(value, 2)


def encode_u32(value: int) -> bytes:
    return _encode_int(value, 4)


def _encode_int(value: int, size: int) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise LocalProtocolError(f"{value} does not fit in {size} unsigned bytes")
    return value.to_bytes(size, "big")


# -- addresses ------------------------------------------------------------------------------


def decode_ip(raw: bytes, code: int = 0) -> IPv4:
    if len(raw) != 4:
        raise _bad(code, f"an IPv4 address needs 4 bytes, got {len(raw)}")
    return IPv4(raw)


def decode_ip_list(raw: bytes, code: int = 0) -> tuple[IPv4, ...]:
    """RFC 2132 list options (3, 6, 42, ...): at least one address, 4 bytes each."""
    if not raw or len(raw) % 4:
        raise _bad(code, f"an address list needs a multiple of 4 bytes, got {len(raw)}")
    return tuple(IPv4(raw[i : i + 4]) for i in range(0, len(raw), 4))


def encode_ip(address: IPv4) -> bytes:
    return address.packed


def encode_ip_list(addresses: Iterable[IPv4]) -> bytes:
    raw = b"".join(a.packed for a in addresses)
    if not raw:
        raise LocalProtocolError("an address list option needs at least one address")
    return raw


# -- text -----------------------------------------------------------------------------------


def decode_text(raw: bytes) -> str:
    """NVT ASCII text (RFC 2132 section 2). Some clients NUL-terminate it (RFC 2132 asks them
    not to): the trailing NULs are dropped. Non-ASCII bytes are escaped, never refused."""
    return raw.rstrip(b"\0").decode("ascii", "backslashreplace")


def encode_text(text: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{text!r} is not ASCII; DHCP text is NVT ASCII") from None


def decode_parameter_list(raw: bytes) -> tuple[int, ...]:
    """Option 55: one code per byte, in the client's order of preference (RFC 2132 9.8)."""
    return tuple(raw)


def decode_user_classes(raw: bytes) -> tuple[bytes, ...]:
    """Option 77. RFC 3004 wants length-prefixed items, but iPXE and many others send one bare
    string ("iPXE"): when the bytes do not parse as RFC 3004 items, the whole is one class."""
    items: list[bytes] = []
    i = 0
    while i < len(raw):
        n = raw[i]
        if n == 0 or i + 1 + n > len(raw):
            return (raw,)
        items.append(raw[i + 1 : i + 1 + n])
        i += 1 + n
    return tuple(items)


# -- PXE (RFC 4578) --------------------------------------------------------------------------


def decode_client_arch(raw: bytes) -> tuple[int, ...]:
    """Option 93: a list of 16-bit architecture types, the client's preferred first."""
    if not raw or len(raw) % 2:
        raise _bad(93, f"needs a non-empty even length, got {len(raw)}")
    return tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))


def encode_client_arch(arches: Iterable[int]) -> bytes:
    return b"".join(encode_u16(a) for a in arches)


@dataclass(frozen=True, slots=True)
class ClientNdi:
    """Option 94: network interface type (1 = UNDI) and its version, RFC 4578 section 2.2."""

    type: int
    major: int
    minor: int


def decode_client_ndi(raw: bytes) -> ClientNdi:
    if len(raw) != 3:
        raise _bad(94, f"needs 3 bytes, got {len(raw)}")
    return ClientNdi(raw[0], raw[1], raw[2])


def encode_client_ndi(ndi: ClientNdi) -> bytes:
    return bytes((ndi.type, ndi.major, ndi.minor))


def decode_client_uuid(raw: bytes) -> uuid.UUID:
    """Option 97: type 0 then 16 bytes (RFC 4578 section 2.3). PXE firmware sends the SMBIOS
    byte order (first three fields little-endian), so this equals what `dmidecode -s
    system-uuid` and /sys/class/dmi/id/product_uuid show on the node."""
    if len(raw) != 17 or raw[0] != 0:
        raise _bad(97, "needs type 0 followed by 16 bytes")
    return uuid.UUID(bytes_le=raw[1:])


def encode_client_uuid(value: uuid.UUID) -> bytes:
    return b"\0" + value.bytes_le


# -- encapsulated sub-options (43, 82, 175) --------------------------------------------------


def decode_suboptions(raw: bytes, code: int) -> tuple[tuple[int, bytes], ...]:
    """A code/length/value sequence inside an option. Pad (0) and end (255) are honoured as in
    vendor option 43 (RFC 2132 section 8.4); anything that runs past the end is refused."""
    items: list[tuple[int, bytes]] = []
    i, end = 0, len(raw)
    while i < end:
        sub = raw[i]
        if sub == 0 and code != Opt.RELAY_AGENT_INFO:
            i += 1
            continue
        if sub == 255 and code != Opt.RELAY_AGENT_INFO:
            break
        if i + 2 > end or i + 2 + raw[i + 1] > end:
            raise _bad(code, f"sub-option {sub} runs past the end")
        items.append((sub, raw[i + 2 : i + 2 + raw[i + 1]]))
        i += 2 + raw[i + 1]
    return tuple(items)


def encode_suboptions(items: Mapping[int, bytes], *, end: bool = True) -> bytes:
    """Encode vendor-style sub-options; `end=True` appends 255 as PXE option 43 expects."""
    out = bytearray()
    for sub, value in items.items():
        if not 0 < sub < 255 or len(value) > 255:
            raise LocalProtocolError(f"sub-option {sub} with {len(value)} bytes cannot be encoded")
        out += bytes((sub, len(value))) + value
    if end:
        out.append(255)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class RelayAgentInfo:
    """Option 82 as parsed (RFC 3046). `raw` is what the server echoes back unchanged."""

    raw: bytes
    suboptions: tuple[tuple[int, bytes], ...]

    @property
    def circuit_id(self) -> bytes | None:
        return self._first(AGENT_CIRCUIT_ID)

    @property
    def remote_id(self) -> bytes | None:
        return self._first(AGENT_REMOTE_ID)

    def _first(self, code: int) -> bytes | None:
        return next((value for sub, value in self.suboptions if sub == code), None)


def decode_relay_agent_info(raw: bytes) -> RelayAgentInfo:
    """RFC 3046 section 2.0: one or more sub-options; each is code, length (at least 1 for
    circuit-id and remote-id, section 3.1/3.2), value. Garbage raises reason "bad_option82"."""
    if not raw:
        raise _bad(82, "carries no sub-option")
    subs = decode_suboptions(raw, Opt.RELAY_AGENT_INFO)
    for sub, value in subs:
        if sub in (AGENT_CIRCUIT_ID, AGENT_REMOTE_ID) and not value:
            raise _bad(82, f"sub-option {sub} is empty")
    return RelayAgentInfo(raw, subs)


#: PXE spec 2.1 table 2-1: PXE_DISCOVERY_CONTROL bit 3 = "boot from the file in this packet,
#: skip boot server discovery". Sent inside option 43 to legacy BIOS PXE ROMs.
PXE_DISCOVERY_CONTROL: Final = 6
PXE_BOOT_FROM_FILE: Final = 8
