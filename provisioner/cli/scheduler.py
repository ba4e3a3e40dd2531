"""`provisioner scheduler ...`: run the small scheduler and talk to it over its REST API."""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import time
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.common import JSON_OPTION, print_json, print_table, state
from provisioner.errors import (
    ConfigError,
    Conflict,
    NotFound,
    ProvisionerError,
    StoreUnavailable,
    ValidationError,
)
from provisioner.scheduler.models import JOB_ID

app = typer.Typer(help="The small scheduler: serve it, list nodes and jobs, submit, cancel, "
                  "drain, resume.", no_args_is_help=True)

NODE_ARG = typer.Argument(..., help="Node name.", show_default=False)


@app.command("serve")
def serve(
    ctx: typer.Context,
    listen: str | None = typer.Option(None, "--listen", help="Address to listen on."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Run the scheduler until interrupted; its state lives in the configured store."""
    from provisioner.scheduler.service import (  # the web stack only when serving
        JobRetention,
        run_scheduler,
    )
    from provisioner.store import open_store

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValidationError("--log-level", f"{log_level!r} is not debug, info, warning or error")
    settings = state(ctx).serving_settings
    s = settings.scheduler
    host = listen or s.listen
    if not s.token and not _loopback(host):
        raise ConfigError(f"scheduler: listening on {host} without [scheduler] token would let "
                          "anyone there run jobs as root on the nodes; set "
                          "PROVISIONER_SCHEDULER_TOKEN (or listen on 127.0.0.1)")
    if settings.store.backend == "sqlite":  # its own file: see [scheduler] sqlite_path
        path = s.sqlite_path or str(settings.data_dir / "scheduler.db")
        settings = dataclasses.replace(settings, store=dataclasses.replace(settings.store,
                                                                           path=path))
    run_scheduler(open_store(settings), host, s.port if port is None else port,
                  log_level=level, interval=s.interval, node_timeout=s.node_timeout,
                  walltime_grace=s.walltime_grace, max_body=s.max_body, token=s.token,
                  retention=JobRetention(jobs_kept=s.jobs_kept, jobs_days=s.jobs_days))


@app.command("nodes")
def nodes(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List the scheduler's nodes and their states."""
    data = _call(ctx, "GET", "/sched/v1/nodes")
    if as_json:
        print_json(data)
        return
    print_table(["name", "state", "cpus", "memory_mib", "partition", "features", "last_seen",
                 "reason"],
                [[n["name"], n["state"], n["cpus"], n["memory_mib"], n["partition"],
                  ",".join(n["features"]), _ago(n["last_seen"]), n["reason"]] for n in data])


@app.command("jobs")
def jobs(
    ctx: typer.Context,
    job_state: str | None = typer.Option(None, "--state", help="pending, running, completed, "
                                         "failed, cancelled or timeout."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List jobs, oldest first."""
    data = _call(ctx, "GET", "/sched/v1/jobs", params={"state": job_state} if job_state else None)
    if as_json:
        print_json(data)
        return
    print_table(["id", "state", "user", "priority", "cpus", "memory_mib", "walltime", "node",
                 "exit", "reason"],
                [[j["id"], j["state"], j["user"], j["priority"], j["cpus"], j["memory_mib"],
                  j["walltime"], j["node"], j["exit_code"], j["reason"]] for j in data])


@app.command("submit")
def submit(
    ctx: typer.Context,
    cpus: int = typer.Option(1, "--cpus", help="CPUs the job needs on one node."),
    mem: int = typer.Option(256, "--mem", help="Memory in MiB."),
    walltime: int = typer.Option(3600, "--walltime", help="Seconds; the job is ended after."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    user: str | None = typer.Option(
        None, "--user", help="Who the job runs as on the node (default: you, the login name "
        "running this command)."),
    as_root: bool = typer.Option(False, "--as-root", help="Run the job as root (admins: "
                                 "needs the scheduler's token)."),
    command: str | None = typer.Option(None, "--command", help="A shell command line."),
    script: Path | None = typer.Option(None, "--script", help="A shell script file.",
                                       exists=True, dir_okay=False),
    as_json: bool = JSON_OPTION,
) -> None:
    """Queue a job: exactly one of --command or --script. It runs on the node as --user (you
    by default), as root only with --as-root."""
    if (command is None) == (script is None):
        raise ValidationError("--command", "give exactly one of --command or --script")
    if as_root and user is not None:
        raise ValidationError("--as-root", "give either --user or --as-root, not both")
    body = {"cpus": cpus, "memory_mib": mem, "walltime": walltime, "priority": priority,
            "user": "" if as_root else user or getpass.getuser(), "as_root": as_root,
            "command": command or "", "script": script.read_text() if script else ""}
    job = _call(ctx, "POST", "/sched/v1/jobs", json=body)
    if as_json:
        print_json(job)
    else:
        typer.echo(f"submitted job {job['id']}")


@app.command("cancel")
def cancel(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a pending or running job."""
    if not JOB_ID.fullmatch(job_id):
        raise ValidationError("JOB_ID", f"{job_id[:40]!r} is not a job id (hex, as `jobs` "
                              "shows it)")
    job = _call(ctx, "DELETE", f"/sched/v1/jobs/{job_id}")
    typer.echo(f"job {job['id']} {job['state']}")


@app.command("drain")
def drain(ctx: typer.Context, name: str = NODE_ARG,
          reason: str = typer.Option(..., "--reason", help="Why (shown in `nodes`).")) -> None:
    """Stop giving the node jobs; it becomes drained when its running jobs end."""
    node = _call(ctx, "POST", f"/sched/v1/nodes/{name}/drain", json={"reason": reason})
    typer.echo(f"{node['name']} {node['state']}")


@app.command("resume")
def resume(ctx: typer.Context, name: str = NODE_ARG) -> None:
    """Give a drained (or down) node jobs again."""
    node = _call(ctx, "POST", f"/sched/v1/nodes/{name}/resume")
    typer.echo(f"{node['name']} {node['state']}")


def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> Any:
    import httpx  # not at the top: every CLI verb would pay for it

    target = state(ctx).target
    url = target.scheduler_url
    token = target.settings.scheduler.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = target.call(lambda: httpx.request(method, url + path, timeout=10.0,
                                                     headers=headers, **kwargs))
    except httpx.HTTPError as exc:
        raise ProvisionerError(f"scheduler at {url} is not answering; start it with "
                               "`provisioner scheduler serve`, or see `provisioner status` for "
                               f"the settings the CLI uses ({_why(exc)})") from None
    if response.status_code < 400:
        return response.json()
    raise _error(response, f"{method} {url}{path}")


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _error(response: Any, request: str) -> ProvisionerError:  # an httpx.Response
    """The scheduler's own message when it sent one; else what answered, and what to do."""
    try:
        message = str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        body = " ".join(response.text.split())[:120] or "no body"
        message = (f"{request} answered HTTP {response.status_code} ({body}): is the "
                   "scheduler there? `provisioner status` shows the URL the CLI uses")
    kinds: dict[int, type[ProvisionerError]] = {404: NotFound, 409: Conflict,
                                                503: StoreUnavailable}
    if response.status_code in kinds:
        return kinds[response.status_code](message)
    error = ProvisionerError(message)
    error.exit_code = 2 if response.status_code in (413, 422) else 1
    return error


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _ago(stamp: float) -> str:
    return f"{int(time.time() - stamp)}s ago" if stamp else "never"
