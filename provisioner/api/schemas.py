"""Request and response bodies of the admin and node planes (the OpenAPI schema comes from here).

This is the wire schema, not the storage encoding: `node_out` and friends build responses from
the domain values field by field, and inventory/codec.py alone says how records are stored, so
a field renamed here is an API change, never a data migration.

Requests refuse unknown fields (`extra="forbid"`): a misspelt field must be an error, not
silently ignored. Domain rules (MAC forms, host names, known settings) stay in model.py and
surface as 422 through web/errors.py, so the API and the CLI refuse the same things.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from provisioner.nodes.model import Firmware, Group, Lease, Node, NodeState, redact

SettingsMap = dict[str, str | int | bool]


class StrictBody(BaseModel):
    """The base of every body a client sends: an unknown field is refused (module docstring)."""

    model_config = ConfigDict(extra="forbid")


class NodeOut(BaseModel):
    mac: str
    name: str
    ip: str | None
    groups: list[str]
    image: str | None
    firmware: Firmware
    state: NodeState
    settings: SettingsMap = Field(description="the node's own settings; secrets are redacted")
    hardware: dict[str, Any] = Field(description="facts reported by the node's boot callback")


def node_out(node: Node) -> NodeOut:
    """A node as the API shows it: secrets redacted."""
    return NodeOut(mac=node.mac.value, name=node.name, ip=str(node.ip) if node.ip else None,
                   groups=list(node.groups), image=node.image, firmware=node.firmware,
                   state=node.state, settings=redact(node.settings), hardware=dict(node.hardware))


class NodePage(BaseModel):
    items: list[NodeOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; "
                                    "null on the last page")


class NodeCreate(StrictBody):
    mac: str = Field(max_length=32, examples=["52:54:00:00:00:01"])
    name: str = Field(max_length=63, examples=["node001"])
    ip: str | None = Field(default=None, max_length=15)
    groups: list[str] = Field(default_factory=list, max_length=32)
    image: str | None = Field(default=None, max_length=128)
    firmware: Firmware = Firmware.UNKNOWN
    settings: SettingsMap = Field(default_factory=dict, max_length=64)


class NodePatch(StrictBody):
    """Only the fields given change; `state` moves the node through the lifecycle table."""

    name: str | None = Field(default=None, max_length=63)
    ip: str | None = Field(default=None, max_length=15, description="'' clears it")
    groups: list[str] | None = Field(default=None, max_length=32)
    image: str | None = Field(default=None, max_length=128, description="'' clears it")
    settings: SettingsMap | None = Field(default=None, max_length=64,
                                         description="replaces the node's own settings")
    state: NodeState | None = None


class EventOut(BaseModel):
    kind: str
    at: float = Field(description="seconds since the epoch")
    offset: float = Field(description="seconds since the first event shown")
    state: NodeState | None = Field(description="the state entered, for state changes")
    duration: float | None = Field(description="seconds spent in that state (the current "
                                   "one until now), or for a step within a state "
                                   "(init_started) until the next change")
    detail: dict[str, Any]


class Timeline(BaseModel):
    mac: str
    name: str
    state: NodeState
    events: list[EventOut]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the "
                                    "next page of events; null on the last page")


class GroupOut(BaseModel):
    name: str
    description: str
    settings: SettingsMap


def group_out(group: Group) -> GroupOut:
    """A group as the API shows it: secrets redacted."""
    return GroupOut(name=group.name, description=group.description,
                    settings=redact(group.settings))


class GroupCreate(StrictBody):
    name: str = Field(max_length=63, examples=["compute"])
    description: str = Field(default="", max_length=1024)
    settings: SettingsMap = Field(default_factory=dict, max_length=64)


class GroupPatch(StrictBody):
    description: str | None = Field(default=None, max_length=1024)
    settings: SettingsMap | None = Field(default=None, max_length=64)


class ImageVersionOut(BaseModel):
    name: str
    version: str
    current: bool
    kernel_release: str | None
    created: str | None
    files: dict[str, dict[str, Any]]
    nodes: int = Field(description="nodes whose image setting names this version")


class ImageOut(BaseModel):
    name: str
    current: str | None
    versions: list[ImageVersionOut]


class SetCurrent(StrictBody):
    version: str = Field(max_length=10, examples=["2"])


class LeaseOut(BaseModel):
    ip: str
    mac: str
    expires: float
    hostname: str | None
    client_id: str | None
    state: str


def lease_out(lease: Lease) -> LeaseOut:
    return LeaseOut(ip=str(lease.ip), mac=lease.mac.value, expires=lease.expires,
                    hostname=lease.hostname, client_id=lease.client_id, state=lease.state)


class PowerRequest(StrictBody):
    action: Literal["on", "off", "cycle", "soft-off", "status"]


class PowerResult(BaseModel):
    node: str
    action: str
    power: str = Field(description="on, off or unknown after the action")


class ReimageRequest(StrictBody):
    nodes: list[str] = Field(min_length=1, max_length=10000)
    image: str = Field(max_length=128, examples=["compute:2"])
    wave: int = Field(default=1, ge=1, le=10000)
    max_failures: int = Field(default=1, ge=0, le=10000)
    force: bool = False


class ReimageAccepted(BaseModel):
    id: str
    nodes: list[str]
    image: str
    status: str


class RolloutOut(BaseModel):
    id: str
    image: str
    version: str | None
    wave: int
    max_failures: int
    force: bool
    started: float
    state: str = Field(description="running, succeeded, failed, stopped or interrupted (the "
                                   "process that ran it stopped; the appliance resumes the "
                                   "rollouts its API started)")
    finished: float | None
    nodes: dict[str, dict[str, Any]] = Field(description="per node: step, message, wave, "
                                             "started, finished")


class AuditOut(BaseModel):
    seq: str
    who: str
    action: str
    target: str
    outcome: str
    at: float
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) "
                                    "page; null on the last page")


class TokenCreate(StrictBody):
    role: Literal["viewer", "operator", "admin"]
    name: str = Field(default="api", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    created: float


class TokenCreated(TokenOut):
    token: str = Field(description="shown once: store it now, only its hash is kept")


class TaskHealth(BaseModel):
    """One supervised background task (runtime/supervisor.py)."""

    name: str
    status: str = Field(examples=["running"])
    since: float  # when it entered `status` (Unix time)
    restarts: int
    last_error: str


class Health(BaseModel):
    status: str
    store: str
    revision: int
    tasks: list[TaskHealth] = []


class Disk(BaseModel):
    name: str = Field(max_length=64)
    size_bytes: int = Field(ge=0)


class Nic(BaseModel):
    name: str = Field(max_length=64)
    mac: str = Field(default="", max_length=32)


class Facts(BaseModel):
    """Hardware facts gathered by /init; unknown extra facts are kept."""

    model_config = ConfigDict(extra="allow")

    cpus: int = Field(default=0, ge=0, le=1 << 20)
    memory_mib: int = Field(default=0, ge=0, le=1 << 40)
    disks: list[Disk] = Field(default_factory=list, max_length=256)
    nics: list[Nic] = Field(default_factory=list, max_length=256)


class BootedIn(StrictBody):
    """The boot callback from a node's /init (see the /init contract)."""

    mac: str = Field(max_length=32)
    token: str = Field(max_length=256)
    image: str = Field(default="", max_length=128)
    version: str = Field(default="", max_length=16)
    facts: Facts = Field(default_factory=Facts)


class InitStartedIn(StrictBody):
    """From /init of an image whose init is systemd, before it execs it: the kernel and the
    image are up. The one-boot token proves it is the node; it is not used up."""

    mac: str = Field(max_length=32)
    token: str = Field(max_length=256)
    image: str = Field(default="", max_length=128)
    version: str = Field(default="", max_length=16)


class InitStartedOut(BaseModel):
    state: NodeState
    node: str
    mac: str


class BootedOut(BaseModel):
    state: NodeState
    node: str
    mac: str
    #: the node agent's credential for the builtin scheduler, answered once and kept nowhere
    #: in clear (handoff/agent.py); "" unless `[handoff] kind = "builtin"`
    agent_token: str = ""
