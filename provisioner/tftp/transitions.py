"""The table of a read transfer (after h11/_state.py): its states, inputs, actions and events.

Everything that moves a transfer from one state to another is in TRANSITIONS. The session
classifies an input (a datagram, the timer, a failing source), looks up (next state, action)
and runs the action. A (state, input) pair missing from the table is ignored: that is how the
terminal states DONE and FAILED swallow late duplicates. Entering DONE or FAILED emits exactly
one event, TransferCompleted or TransferFailed.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Final, NamedTuple

__all__ = [
    "TRANSITIONS",
    "Action",
    "Event",
    "Input",
    "State",
    "TransferCompleted",
    "TransferFailed",
]


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
