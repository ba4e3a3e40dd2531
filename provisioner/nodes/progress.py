"""A rolling reimage's plan and progress, as stored under keys.reimage(ID): what `node reimage
--status` and the API show, and what a restarted appliance resumes from.

The status holds everything needed to carry on (the request's limits, each node's wave and
step, the number of waves finished), so a rollout that the appliance was running when it
stopped or died is taken up again at its first unfinished wave (nodes/rollout.py `resume`).
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from provisioner.errors import NotFound
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.store.base import KeyValueStore, TxnOp

#: the states of a rollout that is over (as opposed to "running")
FINISHED = frozenset({"succeeded", "failed", "stopped", "interrupted"})
PAGE = 200  # records read per page by stale_rollouts


class Step(enum.StrEnum):
    PENDING = "pending"
    DRAINING = "draining"
    WAITING_IDLE = "waiting_idle"
    POWER_CYCLE = "power_cycle"
    WAITING_CALLBACK = "waiting_callback"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class RolloutRequest:
    """What to reimage and how: the nodes, the image, the wave size and the limits."""

    nodes: tuple[str, ...]
    image: str  # NAME or NAME:VERSION, as the node's `image` will hold it
    version: str | None = None  # the version the callback must report; None: any that boots
    wave: int = 1
    max_failures: int = 1
    force: bool = False
    timeout: float = 900.0  # seconds from power-cycle to ready
    idle_timeout: float = 3600.0  # seconds to wait for running jobs to end


@dataclass
class NodeProgress:
    name: str
    step: Step = Step.PENDING
    message: str = ""
    wave: int = 0
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class Progress:
    """One line of live output: `node` is None for rollout-level news."""

    at: float
    node: str | None
    step: str
    message: str


@dataclass
class RolloutStatus:
    id: str
    image: str
    version: str | None
    wave: int
    max_failures: int
    force: bool
    started: float
    state: str = "running"  # running | succeeded | failed | stopped | interrupted
    finished: float | None = None
    nodes: dict[str, NodeProgress] = field(default_factory=dict)
    timeout: float = 900.0  # RolloutRequest's limits, kept so that a resume applies them
    idle_timeout: float = 3600.0
    #: how many waves are over: a resume starts at the next one
    waves_done: int = 0
    #: run by the appliance, which takes it up again after a restart (the CLI's is not)
    resumable: bool = False

    def request(self) -> RolloutRequest:
        """The request this rollout runs, as stored."""
        return RolloutRequest(nodes=tuple(self.nodes), image=self.image, version=self.version,
                              wave=self.wave, max_failures=self.max_failures, force=self.force,
                              timeout=self.timeout, idle_timeout=self.idle_timeout)

    def plan(self) -> list[list[str]]:
        """The waves, as planned when it started."""
        numbers = sorted({progress.wave for progress in self.nodes.values()})
        return [[name for name, progress in self.nodes.items() if progress.wave == number]
                for number in numbers]

    @property
    def failures(self) -> int:
        return sum(1 for n in self.nodes.values() if n.step is Step.FAILED)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = {k: {**asdict(v), "step": v.step.value} for k, v in self.nodes.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutStatus:
        nodes = {k: NodeProgress(**{**v, "step": Step(v["step"])})
                 for k, v in data.get("nodes", {}).items()}
        fields = {k: v for k, v in data.items() if k != "nodes"}
        return cls(**fields, nodes=nodes)


def waves(names: Sequence[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [list(names[i:i + size]) for i in range(0, len(names), size)]


def new_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(2)


async def load_status(inventory: Inventory, rollout_id: str | None = None) -> RolloutStatus:
    """A rollout's status by id, or the latest one (ids sort by start time)."""
    if rollout_id is not None:
        kv = await inventory.store.get(keys.reimage(rollout_id))
        if kv is None:
            raise NotFound(f"no reimage rollout {rollout_id!r}")
        return RolloutStatus.from_dict(json.loads(kv.value))
    items = (await inventory.store.range(keys.REIMAGE)).items
    if not items:
        raise NotFound("no reimage has run yet; start one with `provisioner node reimage`")
    latest = max(items, key=lambda kv: kv.key)
    return RolloutStatus.from_dict(json.loads(latest.value))


async def stale_rollouts(store: KeyValueStore, *, keep: int,
                         before: float) -> AsyncIterator[TxnOp]:
    """Deletes of finished rollouts' records past retention: those that finished before
    `before` (seconds), and all but the newest `keep` finished ones. Each expects the
    record's revision; a running rollout is never deleted (its record is what a restart
    resumes from). Read a page at a time: only the finished ones' keys are held."""
    finished: list[tuple[float, str, int]] = []
    after = ""
    while True:
        page = await store.page(keys.REIMAGE, after=after, limit=PAGE)
        for kv in page.items:
            data = json.loads(kv.value)
            if data.get("state") in FINISHED:
                finished.append((data.get("finished") or data["started"], kv.key,
                                 kv.mod_revision))
        if len(page.items) < PAGE:
            break
        after = page.items[-1].key
    finished.sort(reverse=True)
    for index, (ended, key, revision) in enumerate(finished):
        if index >= keep or ended < before:
            yield TxnOp(key, None, expect=revision)


async def unfinished(inventory: Inventory) -> list[RolloutStatus]:
    """The rollouts the appliance was running when it stopped, oldest first."""
    found = [RolloutStatus.from_dict(json.loads(kv.value))
             for kv in (await inventory.store.range(keys.REIMAGE)).items]
    return sorted((s for s in found if s.state not in FINISHED and s.resumable),
                  key=lambda s: s.id)
