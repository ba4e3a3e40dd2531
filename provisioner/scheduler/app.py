"""The scheduler's REST API (its own FastAPI app, `provisioner scheduler serve`).

Operators and the appliance's handoff use JSON. The node agent is busybox sh + wget, which can
neither parse nor escape JSON, so its two routes also speak plain text: `poll?format=text`
answers `JOB <id> <walltime> <user>` then the script (or `KILL <id>`), and `done?exit_code=N`
takes the raw output tail.

Any compute node can reach these routes, and its jobs are other users' code, so each needs the
agent credential of the node concerned (handoff/agent.py: made by the boot callback, its hash
handed over with the registration) as `Authorization: Bearer`: a node polls only its own jobs
and reports only the end of jobs started on it. Any refusal is the same 401, whatever the
reason, is logged with the requester's address and changes nothing (a refused poll does not
count as the node being seen).

Jobs run on the node as the user they name; `as_root` (root) needs the [scheduler] token, so a
scheduler without one never runs root jobs.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticError

from provisioner import __version__
from provisioner.errors import Forbidden, NotFound, Unauthorized, ValidationError
from provisioner.metrics import hooks
from provisioner.metrics.collectors import Exposition, SchedulerCollector
from provisioner.metrics.registry import SCHEDULER
from provisioner.scheduler.models import (
    JOB_ID,
    OUTPUT_TAIL,
    Job,
    JobState,
    SchedNode,
    shown,
    shown_state,
    to_dict,
)
from provisioner.scheduler.state import SchedulerState
from provisioner.web import errors
from provisioner.web.auth import Credentials, bearer, shared_secret
from provisioner.web.limits import BodyLimit
from provisioner.web.metrics import metrics_router
from provisioner.web.refusals import RefusalLog

log = logging.getLogger("provisioner.scheduler")
REFUSED = ("no or wrong token: send Authorization: Bearer <[scheduler] token> (the CLI sends "
           "PROVISIONER_SCHEDULER_TOKEN)")
AGENT_REFUSED = ("no or wrong agent credential for this node or job: the node agent sends the "
                 "one its boot callback answered (reboot the node to get a new one)")
METRICS_REFUSED = ("/metrics answers other machines only with the scheduler's token, and this "
                   "scheduler has none: set [scheduler] token (PROVISIONER_SCHEDULER_TOKEN), "
                   "or scrape from the scheduler's own machine")
AGENT_CREDENTIAL = bearer("the node agent's credential, answered by its boot callback")


class NodeIn(BaseModel):
    cpus: int = Field(ge=1, le=1 << 20)
    memory_mib: int = Field(ge=1, le=1 << 40)
    features: list[str] = Field(default_factory=list, max_length=64)
    partition: str = Field(default="", max_length=64)
    mac: str = Field(default="", max_length=32)
    agent_hash: str = Field(default="", pattern="^([0-9a-f]{64})?$",
                            description="SHA-256 (hex) of the node agent's credential of this "
                                        "boot; replaces the last one. Empty: keep it.")


class DrainIn(BaseModel):
    reason: str = Field(min_length=1, max_length=256)


class JobIn(BaseModel):
    cpus: int = Field(ge=1, le=1 << 20)
    memory_mib: int = Field(ge=1, le=1 << 40)
    walltime: int = Field(ge=1, le=366 * 86400, description="seconds")
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    user: str = Field(default="", max_length=32,
                      description="who the job runs as on the node; required unless as_root")
    as_root: bool = Field(default=False, description="run as root; needs the [scheduler] token")
    command: str = Field(default="", max_length=65536)
    script: str = Field(default="", max_length=262144)


class DoneIn(BaseModel):
    exit_code: int = Field(ge=-255, le=255)
    output: str = Field(default="", max_length=1 << 20)


def create_app(state: SchedulerState, *, max_body: int = 1 << 20, token: str = "") -> FastAPI:
    """The FastAPI app over a loaded SchedulerState, behind the body-size cap. With a `token`,
    every route but the agent's poll and done needs `Authorization: Bearer TOKEN`."""
    app = FastAPI(title="provisioner scheduler", version=__version__,
                  responses=errors.responses(400, 404, 409, 413, 422, 503))
    app.add_middleware(BodyLimit, max_body=max_body, setting="[scheduler] max_body")
    errors.install(app)
    guard = shared_secret(token, REFUSED, "the [scheduler] token", "scheduler")
    admin = APIRouter(dependencies=[Depends(guard)] if token else [],
                      responses=errors.responses(401))
    _node_routes(admin, state)
    _job_routes(admin, state, admins=bool(token))
    app.include_router(admin)
    _agent_routes(app, state)
    app.include_router(metrics_router(exposition(state).render, guard if token else _no_token,
                                      "the [scheduler] token"))

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "nodes": len(state.nodes), "jobs": len(state.jobs)}

    return app


def exposition(state: SchedulerState) -> Exposition:
    """The scheduler's metrics: the handoff latency, refusals, and its queue read at scrape
    time."""
    return Exposition(SCHEDULER, SchedulerCollector(
        lambda: (j.state.value for j in state.job_list() if not j.state.finished),
        lambda: _node_states(state)))


def _node_states(state: SchedulerState) -> list[str]:
    """Each node's state as `nodes` shows it (idle nodes running jobs: mixed, allocated)."""
    by_node: dict[str, list[Job]] = {}
    for job in state.running():
        by_node.setdefault(job.node, []).append(job)
    return [str(shown_state(n, by_node.get(n.name, []))) for n in state.node_list()]


async def _no_token(request: Request, credentials: Credentials | None) -> None:
    """/metrics from outside loopback on a scheduler without a token: nothing to check a
    scrape against, so it is refused."""
    hooks.refused("scheduler", "no_token")
    raise Forbidden(METRICS_REFUSED)


def node_view(state: SchedulerState, node: SchedNode) -> dict[str, Any]:
    data = shown(node)
    data["state"] = str(shown_state(node, [j for j in state.running() if j.node == node.name]))
    return data


def _node_routes(app: APIRouter, state: SchedulerState) -> None:
    @app.put("/sched/v1/nodes/{name}")
    async def register(name: str, body: NodeIn) -> dict[str, Any]:
        """Add or update a node (idempotent). The answer is the scheduler's confirmation."""
        node = await state.register(name, cpus=body.cpus, memory_mib=body.memory_mib,
                                    features=body.features, partition=body.partition,
                                    mac=body.mac, agent_hash=body.agent_hash)
        return shown(node)

    @app.get("/sched/v1/nodes")
    async def list_nodes() -> list[dict[str, Any]]:
        by_node: dict[str, list[Job]] = {}
        for job in state.running():
            by_node.setdefault(job.node, []).append(job)
        return [dict(shown(n), state=str(shown_state(n, by_node.get(n.name, []))))
                for n in state.node_list()]

    @app.get("/sched/v1/nodes/{name}")
    async def get_node(name: str) -> dict[str, Any]:
        return node_view(state, state.node(name))

    @app.post("/sched/v1/nodes/{name}/drain")
    async def drain(name: str, body: DrainIn) -> dict[str, Any]:
        """No new jobs; the node becomes drained when its running jobs end."""
        return node_view(state, await state.drain(name, body.reason))

    @app.post("/sched/v1/nodes/{name}/resume")
    async def resume(name: str) -> dict[str, Any]:
        return node_view(state, await state.resume(name))


def _job_routes(app: APIRouter, state: SchedulerState, *, admins: bool) -> None:
    @app.get("/sched/v1/jobs")
    async def list_jobs(state_: Annotated[str | None, Query(alias="state")] = None
                        ) -> list[dict[str, Any]]:
        wanted = _job_state(state_) if state_ else None
        return [to_dict(j) for j in state.job_list(wanted)]

    @app.post("/sched/v1/jobs", status_code=201, responses=errors.responses(403))
    async def submit(body: JobIn) -> dict[str, Any]:
        """Queue a job for `user`, or for root with `as_root` (admins only)."""
        fields = body.model_dump(exclude={"as_root"})
        fields["user"] = _job_user(body, admins)
        return to_dict(await state.submit(**fields))

    @app.get("/sched/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return to_dict(state.job(_job_id(job_id)))

    @app.delete("/sched/v1/jobs/{job_id}")
    async def cancel(job_id: str) -> dict[str, Any]:
        return to_dict(await state.cancel(_job_id(job_id)))


def _job_user(body: JobIn, admins: bool) -> str:
    """Who the job runs as: its `user`, or root when an admin asked with `as_root`."""
    if body.as_root:
        if not admins:
            raise Forbidden("as_root needs the scheduler's admin token, and this scheduler has "
                            "none: set [scheduler] token (PROVISIONER_SCHEDULER_TOKEN)")
        if body.user not in ("", "root"):
            raise ValidationError("user", "give either user or as_root, not both")
        return "root"
    if not body.user:
        raise ValidationError("user", "say who the job runs as (user NAME), or ask for root "
                              "with as_root: true (admin token)")
    if body.user == "root":
        raise ValidationError("user", "a root job needs as_root: true (admin token)")
    return body.user


def _job_id(text: str) -> str:
    if not JOB_ID.fullmatch(text):
        raise NotFound(f"no job {text[:40]!r}; see `provisioner scheduler jobs`")
    return text


def _refuse_agent(refusals: RefusalLog, request: Request, why: str) -> Unauthorized:
    """The one 401 of the agent routes, logged with who asked (never with what they sent), a
    line per source a minute at most (web/refusals.py)."""
    client = request.client.host if request.client else "unknown"
    hooks.refused("scheduler", "agent_credential")
    # !r: the path is the requester's text; a newline in it must not forge a log line.
    refusals.refused(client, f"agent request {request.method} {request.url.path!r} ({why})")
    return Unauthorized(AGENT_REFUSED)


def _given(credentials: Credentials | None) -> str:
    return credentials.credentials if credentials is not None else ""


def _agent_routes(app: FastAPI, state: SchedulerState) -> None:
    refusals = RefusalLog(log)

    @app.post("/sched/v1/nodes/{name}/poll", responses={
        204: {"description": "No work"}, **errors.responses(401)})
    async def poll(name: str, request: Request, format: str = "json",
                   credentials: Credentials | None = AGENT_CREDENTIAL) -> Any:
        """The node agent asks for work: a job to run, or a cancelled job of its own to kill
        (state `cancelled`; in text, `KILL <id>`); 204 when there is nothing. Needs the
        node's agent credential."""
        if not state.agent_for_node(name, _given(credentials)):
            raise _refuse_agent(refusals, request, "no credential" if credentials is None
                                else f"not the credential of node {name[:64]!r}")
        job = await state.poll(name)
        if job is None:
            return Response(status_code=204)
        if format != "text":
            return to_dict(job)
        if job.state is JobState.CANCELLED:
            return PlainTextResponse(f"KILL {job.id}\n")
        return PlainTextResponse(f"JOB {job.id} {job.walltime} {job.user}\n{job.text}\n")

    @app.post("/sched/v1/jobs/{job_id}/done", openapi_extra=DONE_BODY,
              responses=errors.responses(401))
    async def done(job_id: str, request: Request,
                   exit_code: Annotated[int | None, Query(ge=-255, le=255)] = None,
                   credentials: Credentials | None = AGENT_CREDENTIAL) -> dict[str, Any]:
        """The agent reports a job's end: JSON {exit_code, output}, or ?exit_code=N with the
        output tail as the body (busybox wget cannot escape JSON). Needs the agent credential
        of the node the job runs on; an unknown job is refused the same way, so the answer
        tells nothing about which ids exist."""
        if not state.agent_for_job(job_id, _given(credentials)):
            raise _refuse_agent(refusals, request, "no credential" if credentials is None
                                else "not the credential of the job's node")
        raw = await request.body()
        if exit_code is not None:
            report = DoneIn(exit_code=exit_code,
                            output=raw[-OUTPUT_TAIL:].decode("utf-8", "replace"))
        elif request.headers.get("content-type", "").startswith("application/json"):
            try:
                report = DoneIn.model_validate_json(raw)
            except PydanticError as exc:
                raise ValidationError("body", str(exc.errors()[0].get("msg"))) from None
        else:
            raise ValidationError("exit_code", "send JSON {exit_code, output} or ?exit_code=N")
        return to_dict(await state.done(job_id, report.exit_code, report.output))


DONE_BODY: dict[str, Any] = {"requestBody": {"content": {
    "application/json": {"schema": DoneIn.model_json_schema()},
    "text/plain": {"schema": {"type": "string", "description": "output tail; "
                              "with ?exit_code=N"}}}}}


def _job_state(text: str) -> JobState:
    try:
        return JobState(text)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise ValidationError("state", f"{text!r} is not one of {names}") from None

