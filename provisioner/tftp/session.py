"""One TFTP read transfer as a sans-IO state machine: aioquic's `now`-driven API, h11's table.

Rules of this file (after h11/_state.py):

1. Everything that moves a transfer from one state to another is in TRANSITIONS below. The code
   classifies an input (a datagram, the timer, a failing source), looks up (next state, action)
   and runs the action. A (state, input) pair missing from the table is ignored: that is how the
   terminal states DONE and FAILED swallow late duplicates.
2. No I/O and no clock. Time arrives as `now` (seconds, any monotonic origin), datagrams arrive
   through `receive_datagram` and leave through `datagrams_to_send`, file bytes come from a
   `Source`. The server owns the socket, the peer's address (TID) and the sleeping.
3. The peer cannot make this code raise. Garbage becomes ERROR 4 plus `TransferFailed`; an ERROR
   from the peer becomes `TransferFailed` and no reply (RFC 1350 section 7).
4. Only the timer resends the window it is waiting on. A duplicate ACK never does: that is the
   Sorcerer's Apprentice bug (RFC 1123 section 4.2.3.1). An ACK inside the window moves the
   window to the block after it and sends from there (RFC 7440 section 4: the blocks after it
   were lost). An ACK for a block not yet sent, or an old one, is ignored.
5. Blocks are counted without bound internally and sent modulo 65536, so block 65535 is followed
   by block 0 (tftp-hpa's and iPXE's rollover), and files of any size can be served.
6. Entering DONE or FAILED emits exactly one event, stops the timer and closes the source.

Netascii (RFC 1350, RFC 764) is converted, not refused: LF becomes CR LF and a bare CR becomes
CR NUL, block by block as the file is read. tsize is not answered in netascii mode, because the
converted size is only known after reading the whole file (tftp-hpa does the same).
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, NamedTuple, Protocol

from provisioner.errors import MalformedPacket, ProvisionerError, ValidationError
from provisioner.tftp.packet import (
    Error,
    ErrorCode,
    Mode,
    Opcode,
    Options,
    ReadRequest,
    WriteRequest,
    decode,
    encode_error,
    encode_oack,
)
from provisioner.tftp.paths import ForbiddenPath, canonical_path

__all__ = [
    "READAHEAD",
    "TRANSITIONS",
    "UNKNOWN_TID",
    "Accepted",
    "Event",
    "Negotiated",
    "Rejected",
    "SessionConfig",
    "Source",
    "State",
    "TftpSession",
    "TransferCompleted",
    "TransferFailed",
    "error_datagram",
    "negotiate",
    "screen_request",
]


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


class TransferCompleted(NamedTuple):
    bytes_sent: int  # file bytes delivered, each counted once
    duration: float
    retransmits: int  # datagrams sent again (timer or lost-block recovery)


class TransferFailed(NamedTuple):
    reason: str  # counter token: timeout, peer_error, malformed, illegal_operation, ...
    error_code: int | None  # the ERROR code sent or received; None when nothing was said
    message: str
    bytes_sent: int = 0
    duration: float = 0.0
    retransmits: int = 0


Event = TransferCompleted | TransferFailed


class State(Enum):
    START = auto()
    SENT_OACK = auto()  # waiting for ACK 0
    SENDING = auto()  # a window is out, waiting for the ACK of its last block
    DONE = auto()
    FAILED = auto()


class Input(Enum):
    REQUEST = auto()  # no option accepted: DATA 1 goes out at once
    REQUEST_WITH_OPTIONS = auto()
    ACK_OACK = auto()  # ACK 0 after our OACK
    ACK_WINDOW = auto()  # ACK of the last block sent
    ACK_PARTIAL = auto()  # ACK of an earlier block of the window: the rest was lost
    ACK_FINAL = auto()  # ACK of the file's last block
    ACK_DUPLICATE = auto()  # ACK of the block already acknowledged
    ACK_IGNORED = auto()  # ACK of a block not yet sent, or far in the past
    PEER_ERROR = auto()
    GARBAGE = auto()  # undecodable, or an opcode a reading client never sends
    TIMEOUT = auto()
    RETRIES_EXHAUSTED = auto()
    SOURCE_FAILED = auto()
    ABORT = auto()  # the server is shutting the transfer down


class Action(Enum):
    SEND_OACK = auto()  # kept in the window, so RETRANSMIT resends it like any datagram
    SEND_FIRST_WINDOW = auto()  # blocks 1..windowsize
    SEND_WINDOW = auto()  # slide the window to just after the ACKed block and send it
    RETRANSMIT = auto()  # the timer fired: the same datagrams again, with backoff
    IGNORE = auto()
    COMPLETE = auto()
    FAIL_QUIETLY = auto()  # TransferFailed, no datagram
    FAIL_WITH_ERROR = auto()  # ERROR datagram, then TransferFailed


_ENDINGS: Final = {
    Input.PEER_ERROR: (State.FAILED, Action.FAIL_QUIETLY),
    Input.GARBAGE: (State.FAILED, Action.FAIL_WITH_ERROR),
    Input.RETRIES_EXHAUSTED: (State.FAILED, Action.FAIL_QUIETLY),
    Input.ABORT: (State.FAILED, Action.FAIL_WITH_ERROR),
}

TRANSITIONS: Final[dict[State, dict[Input, tuple[State, Action]]]] = {
    State.START: {
        Input.REQUEST: (State.SENDING, Action.SEND_FIRST_WINDOW),
        Input.REQUEST_WITH_OPTIONS: (State.SENT_OACK, Action.SEND_OACK),
    },
    State.SENT_OACK: {
        Input.ACK_OACK: (State.SENDING, Action.SEND_FIRST_WINDOW),
        Input.ACK_IGNORED: (State.SENT_OACK, Action.IGNORE),
        Input.TIMEOUT: (State.SENT_OACK, Action.RETRANSMIT),
        **_ENDINGS,
    },
    State.SENDING: {
        Input.ACK_WINDOW: (State.SENDING, Action.SEND_WINDOW),
        Input.ACK_PARTIAL: (State.SENDING, Action.SEND_WINDOW),
        Input.ACK_FINAL: (State.DONE, Action.COMPLETE),
        Input.ACK_DUPLICATE: (State.SENDING, Action.IGNORE),
        Input.ACK_IGNORED: (State.SENDING, Action.IGNORE),
        Input.TIMEOUT: (State.SENDING, Action.RETRANSMIT),
        Input.SOURCE_FAILED: (State.FAILED, Action.FAIL_WITH_ERROR),
        **_ENDINGS,
    },
    State.DONE: {},
    State.FAILED: {},
}


class _Failure(NamedTuple):
    reason: str
    code: int | None
    message: str


_NO_FAILURE: Final = _Failure("", None, "")
#: packet.encode_data inlined in _fill_window (one call less per block)
_data_header: Final = struct.Struct("!HH").pack
_DATA: Final = int(Opcode.DATA)
assert _DATA == 3  # the literal in ack_and_send
_BLOCK_MASK: Final = 0xFFFF


#: the octet reader asks the source for this much at a time (one read call, for a file one
#: pread system call, per ~22 blocks of 1468 bytes instead of one per block)
READAHEAD: Final = 32768


class _OctetReader:
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


class _NetasciiReader:
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


class TftpSession:
    """The server side of one read transfer, from the accepted RRQ to the last ACK."""

    def __init__(
        self, request: ReadRequest, source: Source, config: SessionConfig, now: float
    ) -> None:
        self.request = request
        self.config = config
        self.negotiated = negotiate(request, source.size, config)
        self.blksize = self.negotiated.blksize
        self.windowsize = self.negotiated.windowsize
        self.bytes_sent = 0
        self.retransmits = 0
        self._source = source
        self._reader = (
            _NetasciiReader(source) if request.mode is Mode.NETASCII else _OctetReader(source)
        )
        self._base_timeout = self.negotiated.timeout or config.timeout
        self._max_timeout = max(self._base_timeout, config.max_timeout)
        self._rto = self._base_timeout
        self._retries = 0
        self._deadline: float | None = None
        self._started = now
        self._state = State.START
        self._acked = 0  # highest block (unbounded count) the client has acknowledged
        self._sent = 0  # highest block sent
        self._last: int | None = None  # the file's last block, once a short read found it
        self._window: deque[bytes] = deque()  # datagrams of blocks _acked+1 .. _sent
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        first = Input.REQUEST_WITH_OPTIONS if self.negotiated.oack else Input.REQUEST
        self._process(first, now)

    @property
    def state(self) -> State:
        return self._state

    # -- the aioquic-shaped API ------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one datagram from the client's TID; never raises on its content."""
        if len(data) >= 4 and data[0] == 0 and data[1] == 4:  # ACK, the hot path
            self.receive_ack((data[2] << 8) | data[3], now)
            return
        try:
            packet = decode(data)
        except MalformedPacket as exc:
            self._fail_on_garbage(now, "malformed", f"malformed packet: {exc.message}")
            return
        if isinstance(packet, Error):
            failure = _Failure("peer_error", packet.code, packet.message)
            self._process(Input.PEER_ERROR, now, failure=failure)
        else:
            name = type(packet).__name__
            self._fail_on_garbage(now, "illegal_operation", f"unexpected {name} in a transfer")

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Datagrams to send now, in order; the retransmit timer counts from this call."""
        out = self._out
        if out:
            self._out = []
            if self._deadline is not None:
                self._deadline = now + self._rto
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must be called next, or None once the transfer has ended."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self._retries < self.config.max_retries:
            self._process(Input.TIMEOUT, now)
        else:
            message = f"no ACK after {self._retries} retransmits"
            self._process(Input.RETRIES_EXHAUSTED, now, failure=_Failure("timeout", None, message))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def abort(self, now: float, message: str = "transfer cancelled by the server") -> None:
        """End the transfer from our side (shutdown, limits): ERROR 0 to the client."""
        failure = _Failure("aborted", ErrorCode.NOT_DEFINED, message)
        self._process(Input.ABORT, now, failure=failure)

    # -- classification --------------------------------------------------------------------

    def receive_ack(self, wire_block: int, now: float) -> None:
        """An ACK datagram from the client's TID, already decoded: `receive_datagram`'s hot path,
        for a server that reads the two bytes of the block number itself."""
        state = self._state
        if state is State.SENDING:
            acked = self._acked
            block = acked + ((wire_block - acked) & _BLOCK_MASK)  # undo the 16-bit wrap
            if block == acked:
                self._process(Input.ACK_DUPLICATE, now)
            elif block > self._sent:
                self._process(Input.ACK_IGNORED, now)
            elif block < self._sent:
                self._process(Input.ACK_PARTIAL, now, block)
            elif block == self._last:
                self._process(Input.ACK_FINAL, now, block)
            else:
                # The common case, run without the table lookups of _process: the entry is
                # (SENDING, ACK_WINDOW) -> (SENDING, SEND_WINDOW), asserted after the class.
                try:
                    self._send_window(now, block, _NO_FAILURE)
                except (OSError, ProvisionerError) as exc:
                    self._source_failed(now, exc)
        elif state is State.SENT_OACK:
            self._process(Input.ACK_OACK if wire_block == 0 else Input.ACK_IGNORED, now)
        # START cannot be observed; DONE and FAILED ignore everything.

    def ack_and_send(self, wire_block: int, now: float) -> list[bytes]:
        """`receive_ack` then `datagrams_to_send` in one call: the server's per-block path.

        The steady state (SENDING, nothing waiting to go out, the ACK of the last block sent
        and that block not the file's last) runs inline: every block of the window is then
        acknowledged, so the window is emptied, refilled from the block after it and returned.
        This is the (SENDING, ACK_WINDOW) -> (SENDING, SEND_WINDOW) entry of the table (asserted
        after the class), with `_send_window`'s effects; everything else takes the general path.
        """
        # (Module constants and literals rather than State.SENDING and _BLOCK_MASK: this runs
        # once per block, and each global or class attribute lookup shows.)
        if self._state is _SENDING and not self._out:
            acked = self._acked
            block = acked + ((wire_block - acked) & 0xFFFF)  # undo the 16-bit wrap
            if block == self._sent and block > acked and block != self._last:
                window = self._window
                window.clear()
                self._acked = block
                if self._retries:  # only a retransmission changes them
                    self._retries = 0
                    self._rto = self._base_timeout
                rto = self._rto
                try:
                    if self.windowsize == 1:  # _fill_window for one block, without the loop
                        blksize = self.blksize
                        payload = self._reader.next(blksize)
                        block += 1
                        if len(payload) < blksize:
                            self._last = block
                        datagram = _data_header(3, block & 0xFFFF) + payload  # DATA
                        window.append(datagram)
                        self.bytes_sent += len(payload)
                        self._sent = block
                        self._deadline = now + rto
                        return [datagram]
                    self._fill_window(block + 1)
                except (OSError, ProvisionerError) as exc:
                    self._source_failed(now, exc)
                    return self.datagrams_to_send(now)
                self._deadline = now + rto
                out = self._out
                self._out = []
                return out
        self.receive_ack(wire_block, now)
        return self.datagrams_to_send(now)

    def _fail_on_garbage(self, now: float, reason: str, message: str) -> None:
        failure = _Failure(reason, ErrorCode.ILLEGAL_OPERATION, message)
        self._process(Input.GARBAGE, now, failure=failure)

    # -- transitions and actions -----------------------------------------------------------

    def _process(
        self, event: Input, now: float, block: int = 0, failure: _Failure = _NO_FAILURE
    ) -> None:
        entry = TRANSITIONS[self._state].get(event)
        if entry is None:
            return
        self._state, action = entry
        try:
            self._ACTIONS[action](self, now, block, failure)
        except (OSError, ProvisionerError) as exc:  # only the Source raises these
            self._source_failed(now, exc)

    def _source_failed(self, now: float, exc: OSError | ProvisionerError) -> None:
        message = "the server could not read the file"
        self._process(
            Input.SOURCE_FAILED,
            now,
            failure=_Failure("source_error", ErrorCode.NOT_DEFINED, f"{message}: {exc}"),
        )

    def _send_oack(self, now: float, block: int, failure: _Failure) -> None:
        self._window.append(encode_oack(self.negotiated.oack))
        self._out.extend(self._window)
        self._deadline = now + self._rto

    def _send_first_window(self, now: float, block: int, failure: _Failure) -> None:
        self._window.clear()  # the OACK, if any: ACK 0 acknowledged it
        self._fill_window(1)
        self._deadline = now + self._rto

    def _send_window(self, now: float, block: int, failure: _Failure) -> None:
        window = self._window
        for _ in range(block - self._acked):
            window.popleft()
        self._acked = block
        self._retries = 0
        self._rto = self._base_timeout
        if window:  # an ACK_PARTIAL: the blocks after `block` are sent again
            self.retransmits += len(window)
            self._out.extend(window)
        self._fill_window(block + len(window) + 1)
        self._deadline = now + self._rto

    def _fill_window(self, block: int) -> None:
        window, out, last = self._window, self._out, self._last
        blksize, read, windowsize = self.blksize, self._reader.next, self.windowsize
        while len(window) < windowsize and (last is None or block <= last):
            payload = read(blksize)
            if len(payload) < blksize:
                last = self._last = block
            datagram = _data_header(_DATA, block & _BLOCK_MASK) + payload  # encode_data
            window.append(datagram)
            out.append(datagram)
            self.bytes_sent += len(payload)
            block += 1
        self._sent = block - 1

    def _retransmit(self, now: float, block: int, failure: _Failure) -> None:
        self._retries += 1
        self._rto = min(self._base_timeout * 2**self._retries, self._max_timeout)
        self.retransmits += len(self._window)
        self._out.extend(self._window)
        self._deadline = now + self._rto

    def _ignore(self, now: float, block: int, failure: _Failure) -> None:
        return

    def _complete(self, now: float, block: int, failure: _Failure) -> None:
        self._acked = block
        self._window.clear()
        duration = now - self._started
        self._finish(TransferCompleted(self.bytes_sent, duration, self.retransmits))

    def _fail_quietly(self, now: float, block: int, failure: _Failure) -> None:
        self._finish(self._failed(now, failure))

    def _fail_with_error(self, now: float, block: int, failure: _Failure) -> None:
        self._out.clear()  # an ERROR supersedes data not yet handed to the socket
        self._out.append(encode_error(failure.code or 0, failure.message))
        self._finish(self._failed(now, failure))

    def _failed(self, now: float, failure: _Failure) -> TransferFailed:
        duration = now - self._started
        reason, code, message = failure
        return TransferFailed(reason, code, message, self.bytes_sent, duration, self.retransmits)

    def _finish(self, event: Event) -> None:
        self._deadline = None
        self._window.clear()
        self._events.append(event)
        # Nothing is left to do with a read-only file that will not close.
        with contextlib.suppress(OSError, ProvisionerError):
            self._source.close()

    _ACTIONS: Final[dict[Action, Callable[[TftpSession, float, int, _Failure], None]]] = {
        Action.SEND_OACK: _send_oack,
        Action.SEND_FIRST_WINDOW: _send_first_window,
        Action.SEND_WINDOW: _send_window,
        Action.RETRANSMIT: _retransmit,
        Action.IGNORE: _ignore,
        Action.COMPLETE: _complete,
        Action.FAIL_QUIETLY: _fail_quietly,
        Action.FAIL_WITH_ERROR: _fail_with_error,
    }


# receive_ack's and ack_and_send's shortcuts for ACK_WINDOW stand for this entry of the table.
assert TRANSITIONS[State.SENDING][Input.ACK_WINDOW] == (State.SENDING, Action.SEND_WINDOW)
_SENDING: Final = State.SENDING


# -- for the server: answering a request without a session ------------------------------------


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
