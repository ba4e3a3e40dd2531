"""RFC 2347 option negotiation for a read request: blksize, timeout, tsize and windowsize.

`negotiate(request, size, config)` decides, option by option, what goes into the OACK. An option
that is unknown, out of its RFC's range or not plain digits is left out of the OACK rather than
refused: the client then falls back to the RFC 1350 default, and a servable request is served.

- blksize (RFC 2348): 8..65464, lowered to what fits the MTU (the server may answer less).
- windowsize (RFC 7440 section 3): 1..65535, lowered to `max_windowsize`.
- timeout (RFC 2349): 1..255 s, echoed unchanged; it becomes the retransmit base (retransmit.py).
- tsize (RFC 2349): the client sends 0, we answer the file's size, in octet mode only (the
  netascii size is known only after converting the whole file; tftp-hpa does the same).

`SessionConfig` holds the server's side of every limit a transfer runs under.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from provisioner.errors import ValidationError
from provisioner.tftp.packet import Mode, Options, ReadRequest

__all__ = [
    "BLKSIZE_RANGE",
    "DEFAULT_BLKSIZE",
    "HEADER_OVERHEAD",
    "TIMEOUT_RANGE",
    "WINDOWSIZE_RANGE",
    "Negotiated",
    "SessionConfig",
    "negotiate",
]

# RFC 2348 / 2349 / 7440 ranges; IPv4 + UDP + TFTP headers sit between the MTU and a block.
BLKSIZE_RANGE: Final = (8, 65464)
TIMEOUT_RANGE: Final = (1, 255)
WINDOWSIZE_RANGE: Final = (1, 65535)
HEADER_OVERHEAD: Final = 20 + 8 + 4
DEFAULT_BLKSIZE: Final = 512


@dataclass(frozen=True, slots=True)
class SessionConfig:
    max_blksize: int = 1468  # 1500-byte Ethernet MTU less HEADER_OVERHEAD
    mtu: int = 1500
    timeout: float = 1.0  # retransmit timeout unless the client negotiates one
    max_timeout: float = 8.0  # cap of the exponential backoff
    max_retries: int = 5  # retransmits of one window before giving up
    max_windowsize: int = 64
    allow_tsize: bool = True

    def __post_init__(self) -> None:
        if not BLKSIZE_RANGE[0] <= self.max_blksize <= BLKSIZE_RANGE[1]:
            raise ValidationError("tftp.max_blksize", "must be between 8 and 65464")
        if self.mtu - HEADER_OVERHEAD < BLKSIZE_RANGE[0]:
            raise ValidationError("tftp.mtu", f"must be at least {HEADER_OVERHEAD + 8}")
        if not 0 < self.timeout <= self.max_timeout:
            raise ValidationError("tftp.timeout", "must be positive and at most max_timeout")
        if self.max_retries < 0:
            raise ValidationError("tftp.max_retries", "must not be negative")
        if not WINDOWSIZE_RANGE[0] <= self.max_windowsize <= WINDOWSIZE_RANGE[1]:
            raise ValidationError("tftp.max_windowsize", "must be between 1 and 65535")

    @property
    def blksize_ceiling(self) -> int:
        return min(self.max_blksize, self.mtu - HEADER_OVERHEAD)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What RFC 2347 negotiation settled on; `oack` is empty when no option was accepted."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None
    oack: Options = ()


def _digits(value: str, low: int, high: int) -> int | None:
    # Plain ASCII digits only (fullwidth and superscript digits pass str.isdigit() too); ten
    # digits is past any range and keeps int() away from Python's 4300-digit limit.
    if 0 < len(value) <= 10 and value.isascii() and value.isdigit():
        number = int(value)
        if low <= number <= high:
            return number
    return None


def negotiate(request: ReadRequest, size: int | None, config: SessionConfig) -> Negotiated:
    """Accept or leave out each option; out of range or not digits is left out, not an error."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    accepted: list[tuple[str, str]] = []
    for name, value in request.options:
        if name == "blksize" and (number := _digits(value, *BLKSIZE_RANGE)) is not None:
            blksize = min(number, config.blksize_ceiling)  # RFC 2348: the server may lower it
            accepted.append((name, str(blksize)))
        elif name == "windowsize" and (number := _digits(value, *WINDOWSIZE_RANGE)) is not None:
            windowsize = min(number, config.max_windowsize)  # RFC 7440 section 3
            accepted.append((name, str(windowsize)))
        elif name == "timeout" and (number := _digits(value, *TIMEOUT_RANGE)) is not None:
            timeout = float(number)  # RFC 2349: echoed unchanged
            accepted.append((name, str(number)))
        elif name == "tsize" and _tsize_allowed(request, size, config, value):
            accepted.append((name, str(size)))  # RFC 2349: the client sends 0, we the size
    return Negotiated(blksize, windowsize, timeout, tuple(accepted))


def _tsize_allowed(
    request: ReadRequest, size: int | None, config: SessionConfig, value: str
) -> bool:
    known = size is not None and request.mode is Mode.OCTET
    return config.allow_tsize and known and _digits(value, 0, 10**10 - 1) is not None
