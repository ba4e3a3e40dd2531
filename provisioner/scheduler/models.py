"""The scheduler's records: nodes and jobs. Pure: no IO, no clock (times are passed in).

A node's stored `state` is what the operator or the dispatcher decided (idle, draining, drained,
down); `allocated` and `mixed` are derived from the running jobs when a node is shown, so
starting or ending a job never rewrites the node record.

A job's id is random hex (state.py draws it), so an id says nothing about other jobs and
cannot be guessed; `seq`, the submission count, keeps lists and ties in submission order.
Jobs stored when ids were a zero-padded counter keep that id as their text and their number as
`seq`. A job runs on its node as `user`, a POSIX account name; as root only when an admin
asked for it (the API's `as_root`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ValidationError
from provisioner.nodes.model import check_hostname

OUTPUT_TAIL = 4096  # bytes of a job's output kept with the job
#: a job id: random hex now, the 10 digits of the old counter before
JOB_ID = re.compile(r"[0-9a-f]{10,32}")
#: a user a job runs as: a POSIX portable name (no leading "-": it would be an option to su)
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


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
    #: SHA-256 of its agent's credential (handoff/agent.py), from the last boot's handoff;
    #: never shown by the API
    agent_hash: str = ""

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.IDLE


@dataclass(frozen=True, slots=True)
class Job:
    id: str
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
    seq: int = 0  # submission order (ids are random)

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
             partition: str = "default", mac: str = "", now: float = 0.0,
             agent_hash: str = "") -> SchedNode:
    return SchedNode(name=check_hostname(name), cpus=check_positive("cpus", cpus),
                     memory_mib=check_positive("memory_mib", memory_mib),
                     features=tuple(sorted(set(features))), partition=partition or "default",
                     mac=mac, registered=now, agent_hash=agent_hash)


def check_user(user: str) -> str:
    if not USER_NAME.fullmatch(user):
        raise ValidationError("user", f"{user[:40]!r} is not a user name: 1-32 of A-Z a-z 0-9 "
                              "_ . -, not starting with a digit, '.' or '-'")
    return user


def new_job(job_id: str, *, cpus: int, memory_mib: int, walltime: int, priority: int = 0,
            user: str = "root", command: str = "", script: str = "", now: float = 0.0,
            seq: int = 0) -> Job:
    if bool(command) == bool(script):
        raise ValidationError("command", "give exactly one of command or script")
    return Job(id=job_id, cpus=check_positive("cpus", cpus),
               memory_mib=check_positive("memory_mib", memory_mib),
               walltime=check_positive("walltime", walltime, 366 * 86400),
               priority=priority, user=check_user(user), command=command, script=script,
               submit_time=now, seq=seq)


_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(SchedNode))
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


def to_dict(record: SchedNode | Job) -> dict[str, Any]:
    """Plain JSON-ready fields, as stored (not dataclasses.asdict: its deep copy costs more
    than the store write on a registration). The API shows nodes with `shown`."""
    if isinstance(record, SchedNode):
        data = {name: getattr(record, name) for name in _NODE_FIELDS}
        data["features"] = list(record.features)
    else:
        data = {name: getattr(record, name) for name in _JOB_FIELDS}
    data["state"] = str(record.state)
    return data


def shown(node: SchedNode) -> dict[str, Any]:
    """A node as the API shows it: whether it has an agent credential, not its hash."""
    data = to_dict(node)
    data["agent"] = bool(data.pop("agent_hash"))
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
    if isinstance(values.get("id"), int):  # stored by the old counter: the key's spelling
        values.setdefault("seq", values["id"])
        values["id"] = f"{values['id']:010d}"
    return Job(**values)


def shown_state(node: SchedNode, running: Sequence[Job]) -> NodeState:
    """The state an operator sees: idle nodes running jobs are mixed or allocated."""
    if node.state is not NodeState.IDLE or not running:
        return node.state
    used = sum(j.cpus for j in running)
    return NodeState.ALLOCATED if used >= node.cpus else NodeState.MIXED
