"""A node's timeline: its events in time order, with the time it spent in each state.

Pure: the events and `now` come in as arguments (the API and `node events` read them from the
inventory and the clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.nodes.model import BootEvent, NodeState


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event, with how long after the first it came and how long the node then stayed."""

    event: BootEvent
    offset: float  # seconds since the first event shown
    duration: float | None  # seconds until the next state change or step; None for others
    state: str | None  # the state entered, for state events


def timeline(events: Sequence[BootEvent], now: float | None) -> list[TimelineEntry]:
    """Events in time order; state events carry the time spent in that state (the current
    state runs until `now`). A page of a longer timeline passes `now=None`: its last state
    goes on past the page, so its duration is not known here (None)."""
    ordered = sorted(events, key=lambda e: e.at)
    if not ordered:
        return []
    states = {s.value for s in NodeState}
    # A step within a state (init_started: lifecycle STEPS, recorded under its event's name)
    # starts a phase too, so a systemd image's boot shows kernel+image (provisioning), init
    # (init_started) and then booted apart; only a state event names a state.
    changes = [i for i, e in enumerate(ordered) if "from" in e.detail
               and (e.kind in states or e.detail.get("event") == e.kind)]
    # changes[1:] + [None] pairs each change with the next; no change, no pairs (a timeline
    # may hold only other events, such as a power cycle).
    nexts: list[int | None] = [*changes[1:], None] if changes else []
    ends = {i: (ordered[j].at if j is not None else now)
            for i, j in zip(changes, nexts, strict=True)}
    start = ordered[0].at
    return [TimelineEntry(e, round(e.at - start, 6),
                          _duration(ends.get(i), e.at),
                          e.kind if i in ends and e.kind in states else None)
            for i, e in enumerate(ordered)]


def _duration(end: float | None, start: float) -> float | None:
    return None if end is None else round(end - start, 6)
