"""One TFTP read transfer as a sans-IO state machine: aioquic's `now`-driven API, h11's table.

Rules of this file:

1. Everything that moves a transfer from one state to another is in TRANSITIONS (transitions.py).
   The code here classifies an input (a datagram, the timer, a failing source), looks up (next
   state, action) and runs the action; a pair missing from the table is ignored.
2. No I/O and no clock. Time arrives as `now` (seconds, any monotonic origin), datagrams arrive
   through `receive_datagram` and leave through `datagrams_to_send`, file bytes come from a
   `Source` (readers.py). The server owns the socket, the peer's address (TID) and the sleeping.
3. The peer cannot make this code raise. Garbage becomes ERROR 4 plus `TransferFailed`; an ERROR
   from the peer becomes `TransferFailed` and no reply (RFC 1350 section 7).
4. Only the timer resends the window it is waiting on, as often and as late as retransmit.py
   says. A duplicate ACK never does: that is the Sorcerer's Apprentice bug (RFC 1123 section
   4.2.3.1). An ACK inside the window moves the window to the block after it and sends from
   there (RFC 7440 section 4: the blocks after it were lost). An ACK for a block not yet sent,
   or an old one, is ignored.
5. Blocks are counted without bound internally and sent modulo 65536, so block 65535 is followed
   by block 0 (tftp-hpa's and iPXE's rollover), and files of any size can be served.
6. Entering DONE or FAILED emits exactly one event, stops the timer and closes the source.

What options the client gets is negotiation.py's job; what the blocks contain (octet, or
netascii converted on the fly) is readers.py's.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

from provisioner.errors import MalformedPacket, ProvisionerError
from provisioner.tftp.negotiation import SessionConfig, negotiate
from provisioner.tftp.packet import (
    Error,
    ErrorCode,
    Opcode,
    ReadRequest,
    decode,
    encode_error,
    encode_oack,
)
from provisioner.tftp.readers import Source, block_reader
from provisioner.tftp.retransmit import RetransmitPolicy
from provisioner.tftp.transitions import (
    TRANSITIONS,
    Action,
    Event,
    Input,
    State,
    TransferCompleted,
    TransferFailed,
)

__all__ = ["TftpSession"]


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
        self._reader = block_reader(source, request.mode)
        self._policy = RetransmitPolicy.for_transfer(self.negotiated, config)
        self._rto = self._policy.base
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
        if not self._policy.exhausted(self._retries):
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
                    self._rto = self._policy.base
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
        self._rto = self._policy.base
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
        self._rto = self._policy.rto(self._retries)
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
