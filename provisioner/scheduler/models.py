"""The scheduler's records: nodes and jobs. Pure: no IO, no clock (times are passed in).

A node's stored `state` is what the operator or the dispatcher decided (idle, draining, drained,
down); `allocated` and `mixed` are derived from the running jobs when a node is shown, so
starting or ending a job never rewrites the node record.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ValidationError
from provisioner.nodes.model import check_hostname

OUTPUT_TAIL = 4096  # bytes of a job's output kept with the job


class NodeState(enum.StrEnum):
    IDLE = "idle"
    MIXED = "mixed"  # shown only: some of its CPUs run jobs
    ALLOCATED = "allocated"  # shown only: all of its CPUs run jobs
    DRAINING = "draining"  # no new jobs; becomes drained when its jobs end
    DRAINED = "drained"
    DOWN = "down"  # its agent stopped polling


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True, slots=True)
class SchedNode:
    name: str
    cpus: int
    memory_mib: int
    features: tuple[str, ...] = ()
    partition: str = "default"
    state: NodeState = NodeState.IDLE
    mac: str = ""
    reason: str = ""
    last_seen: float = 0.0  # last poll by its agent; 0: never polled
    registered: float = 0.0

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.IDLE


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    cpus: int
    memory_mib: int
    walltime: int  # seconds
    priority: int = 0
    user: str = "root"
    command: str = ""
    script: str = ""
    state: JobState = JobState.PENDING
    node: str = ""
    submit_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    exit_code: int | None = None
    output: str = ""
    delivered: bool = False  # handed to the node's agent by a poll
    reason: str = ""

    @property
    def text(self) -> str:
        """What the agent runs with sh: the script, else the command line."""
        return self.script or self.command

    def expected_end(self) -> float:
        return self.start_time + self.walltime


def check_positive(field_name: str, value: int, limit: int = 1 << 30) -> int:
    if not 0 < value <= limit:
        raise ValidationError(field_name, f"must be between 1 and {limit}, got {value}")
    return value


def new_node(name: str, cpus: int, memory_mib: int, *, features: Sequence[str] = (),
             partition: str = "default", mac: str = "", now: float = 0.0) -> SchedNode:
    return SchedNode(name=check_hostname(name), cpus=check_positive("cpus", cpus),
                     memory_mib=check_positive("memory_mib", memory_mib),
                     features=tuple(sorted(set(features))), partition=partition or "default",
                     mac=mac, registered=now)


def new_job(job_id: int, *, cpus: int, memory_mib: int, walltime: int, priority: int = 0,
            user: str = "root", command: str = "", script: str = "", now: float = 0.0) -> Job:
    if bool(command) == bool(script):
        raise ValidationError("command", "give exactly one of command or script")
    if not user.isprintable() or not 0 < len(user) <= 64:
        raise ValidationError("user", "must be 1-64 printable characters")
    return Job(id=job_id, cpus=check_positive("cpus", cpus),
               memory_mib=check_positive("memory_mib", memory_mib),
               walltime=check_positive("walltime", walltime, 366 * 86400),
               priority=priority, user=user, command=command, script=script, submit_time=now)


_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(SchedNode))
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


def to_dict(record: SchedNode | Job) -> dict[str, Any]:
    """Plain JSON-ready fields (not dataclasses.asdict: its deep copy costs more than the
    store write on a registration)."""
    if isinstance(record, SchedNode):
        data = {name: getattr(record, name) for name in _NODE_FIELDS}
        data["features"] = list(record.features)
    else:
        data = {name: getattr(record, name) for name in _JOB_FIELDS}
    data["state"] = str(record.state)
    return data


def node_from_dict(data: Mapping[str, Any]) -> SchedNode:
    fields = {f.name for f in dataclasses.fields(SchedNode)}
    values = {k: v for k, v in data.items() if k in fields}
    values["state"] = NodeState(values.get("state", "idle"))
    values["features"] = tuple(values.get("features", ()))
    return SchedNode(**values)


def job_from_dict(data: Mapping[str, Any]) -> Job:
    fields = {f.name for f in dataclasses.fields(Job)}
    values = {k: v for k, v in data.items() if k in fields}
    values["state"] = JobState(values.get("state", "pending"))
    return Job(**values)


def shown_state(node: SchedNode, running: Sequence[Job]) -> NodeState:
    """The state an operator sees: idle nodes running jobs are mixed or allocated."""
    if node.state is not NodeState.IDLE or not running:
        return node.state
    used = sum(j.cpus for j in running)
    return NodeState.ALLOCATED if used >= node.cpus else NodeState.MIXED
