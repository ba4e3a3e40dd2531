"""A value read from the store together with the revision it was read at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")
#: compare-and-swap attempts before a write gives up with Conflict
CAS_RETRIES: Final = 20


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A value and the store revision it was read at (pass it back as `expect`)."""

    value: T
    revision: int
