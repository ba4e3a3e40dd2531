"""What a scheduler handoff does, whatever the scheduler: register, drain, resume, is_idle.

Every method is idempotent (the outbox may deliver a registration twice). A failure the caller
should retry raises HandoffError; HandoffRejected says retrying the same request cannot help
(the scheduler refused the node's description), and the outbox records it for the operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner.errors import HandoffError
from provisioner.nodes.model import MacAddress


class HandoffRejected(HandoffError):
    """The scheduler refused the node; fix the node's facts or the scheduler's configuration."""


@dataclass(frozen=True, slots=True)
class HandoffNode:
    name: str
    mac: MacAddress
    cpus: int
    memory_mib: int
    features: tuple[str, ...] = field(default=())
    partition: str = ""
    #: SHA-256 of the node agent's credential of this boot (handoff/agent.py); "" for none
    agent_hash: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mac": str(self.mac), "cpus": self.cpus,
                "memory_mib": self.memory_mib, "features": list(self.features),
                "partition": self.partition, "agent_hash": self.agent_hash}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandoffNode:
        return cls(name=str(data["name"]), mac=MacAddress(str(data["mac"])),
                   cpus=int(data["cpus"]), memory_mib=int(data["memory_mib"]),
                   features=tuple(str(f) for f in data.get("features", ())),
                   partition=str(data.get("partition", "")),
                   agent_hash=str(data.get("agent_hash", "")))


class Handoff(Protocol):
    async def register(self, node: HandoffNode) -> None:
        """Make the node schedulable; returns once the scheduler confirmed it."""
        ...

    async def drain(self, name: str, reason: str) -> None: ...

    async def resume(self, name: str) -> None: ...

    async def is_idle(self, name: str) -> bool:
        """True when the node runs no job (drained, or idle)."""
        ...

    async def close(self) -> None: ...


class NoHandoff:
    """`[handoff] kind = "none"`: nodes are ready as soon as they boot."""

    async def register(self, node: HandoffNode) -> None:
        return None

    async def drain(self, name: str, reason: str) -> None:
        return None

    async def resume(self, name: str) -> None:
        return None

    async def is_idle(self, name: str) -> bool:
        return True

    async def close(self) -> None:
        return None
