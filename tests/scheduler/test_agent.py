"""The node agent (templates/overlay/etc/provisioner/agent.j2) run with busybox sh on this host
against a live scheduler on loopback: real busybox wget, real jobs run as real users with
busybox su (these tests run as root, as the agent does on a node), real reports."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.render.environment import Renderer
from provisioner.scheduler.models import JobState
from provisioner.scheduler.service import SchedulerServer
from tests.scheduler.agents import AgentCredential
from tests.support.etcd_server import free_port

AGENT = "overlay/etc/provisioner/agent.j2"
APPLETS = ("wget", "timeout", "sleep", "tail", "mkdir", "rm", "cat", "setsid", "id", "su",
           "chown", "chmod")
CREDENTIAL = AgentCredential.new()
NODE = {"cpus": 4, "memory_mib": 1024, "agent_hash": CREDENTIAL.hash}
JOB = {"cpus": 1, "memory_mib": 10, "walltime": 60, "user": "nobody"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs jobs as other users "
                                "with su, as root does on a node")


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A directory other users may traverse (pytest's own are root's only): the jobs of
    `nobody` reach their work directory through it."""
    path = Path(tempfile.mkdtemp(prefix="agent-test-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_env(tmp_path: Path, url: str, polls: int,
              credential: str = CREDENTIAL.token) -> dict[str, str]:
    """busybox applets first on PATH, so the agent runs with what the image has; the agent
    credential in a root-only file, as /init leaves it."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is needed (apt-get install busybox)"
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for applet in APPLETS:
        if not (bindir / applet).exists():
            (bindir / applet).symlink_to(busybox)
    env_file = tmp_path / "node.env"
    env_file.write_text(f"PROVISIONER_NODE=node001\nPROVISIONER_SCHEDULER_URL={url}/\n"
                        "PROVISIONER_TOKEN=one-boot-token\nexport PROVISIONER_TOKEN\n")
    token_file = tmp_path / "agent.token"
    token_file.write_text(credential + "\n")
    token_file.chmod(0o600)
    return {"PATH": f"{bindir}:/usr/bin:/bin", "PROVISIONER_ENV_FILE": str(env_file),
            "PROVISIONER_AGENT_TOKEN_FILE": str(token_file),
            "PROVISIONER_AGENT_DIR": str(tmp_path / "jobs"), "PROVISIONER_AGENT_IDLE": "0.1",
            "PROVISIONER_AGENT_MAX_BACKOFF": "1", "PROVISIONER_AGENT_POLLS": str(polls)}


def rendered_agent(tmp_path: Path) -> Path:
    renderer = Renderer()
    assert renderer.mode(AGENT) == 0o755
    path = tmp_path / "agent"
    path.write_text(renderer.render(AGENT, {}, node="node001"))
    assert path.read_text().startswith("#!/bin/sh\n")
    path.chmod(0o755)
    return path


async def start_agent(agent: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "busybox", "sh", str(agent), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def run_agent(agent: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    proc = await start_agent(agent, env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        os.killpg(proc.pid, 9)
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode()


async def _submit(client: httpx.AsyncClient, jobs: list[dict[str, object]]) -> list[str]:
    ids = []
    for body in jobs:
        made = await client.post("/sched/v1/jobs", json={**JOB, **body})
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    return ids


async def test_agent_runs_jobs_and_reports_them(sched: SchedulerServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        ids = await _submit(client, [
            {"command": "echo hello from job $PROVISIONER_JOB_ID as $(id -un); pwd > here"},
            {"script": '#!/bin/sh\necho "it\'s & <odd> %20 \\"q\\"" >&2\nexit 3\n'},
            {"command": "sleep 30", "walltime": 1},
            # What a job could try: read the credential, the agent's environment, the boot
            # token, or another job's files.
            {"command": f"cat {tmp_path}/agent.token; env; ls {tmp_path}/jobs; true"},
        ])
    started = time.monotonic()
    code, log = await run_agent(rendered_agent(tmp_path), agent_env(tmp_path, sched.url, 25),
                                timeout=30)
    assert code == 0, log
    one, two, three, four = (sched.state.job(i) for i in ids)
    assert (one.state, one.exit_code) == (JobState.COMPLETED, 0), one
    assert one.output == f"hello from job {one.id} as nobody\n"
    work = tmp_path / "jobs" / one.id / "work"
    assert (work / "here").read_text().strip() == str(work)  # its own work directory
    assert work.stat().st_uid == 65534 and (work / "here").stat().st_uid == 65534
    assert (two.state, two.exit_code) == (JobState.FAILED, 3)
    assert two.output == 'it\'s & <odd> %20 "q"\n'
    assert (three.state, three.exit_code) == (JobState.FAILED, 137)  # killed at its walltime
    assert four.state is JobState.COMPLETED
    assert CREDENTIAL.token not in four.output and "one-boot-token" not in four.output
    assert "Permission denied" in four.output, four.output
    assert CREDENTIAL.token not in log
    assert sched.state.node("node001").last_seen > 0
    assert f"job {one.id} reported (exit 0)" in log
    assert time.monotonic() - started < 20


async def test_jobs_run_as_root_only_when_sent_as_root(sched: SchedulerServer,
                                                       tmp_path: Path) -> None:
    """A user the node does not have: exit 67 (EX_NOUSER) and no run at all. Root: only a job
    the scheduler sent with user root (as_root); `sched` has no admin token, so the job is
    queued on the state directly, as the API would after checking the token."""
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        missing, = await _submit(client, [{"user": "no-such-user", "command": "touch ran"}])
    root = await sched.state.submit(cpus=1, memory_mib=1, walltime=60, user="root",
                                    command="id -u")
    code, log = await run_agent(rendered_agent(tmp_path), agent_env(tmp_path, sched.url, 10),
                                timeout=30)
    assert code == 0, log
    failed = sched.state.job(missing)
    assert (failed.state, failed.exit_code) == (JobState.FAILED, 67)
    assert "no user 'no-such-user' on node001" in failed.output
    assert not list((tmp_path / "jobs").rglob("ran"))
    ran = sched.state.job(root.id)
    assert (ran.state, ran.output) == (JobState.COMPLETED, "0\n")


async def test_agent_with_a_wrong_or_no_credential_runs_nothing(sched: SchedulerServer,
                                                                tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        job_id, = await _submit(client, [{"command": "touch ran"}])
    stale = AgentCredential.new().token  # e.g. the credential of the node's previous boot
    code, log = await run_agent(rendered_agent(tmp_path),
                                agent_env(tmp_path, sched.url, 3, credential=stale), 20)
    assert code == 0 and log.count("poll failed") == 3, log
    assert stale not in log
    assert not sched.state.job(job_id).delivered and "node001" not in sched.state.seen
    env = agent_env(tmp_path, sched.url, 3)
    Path(env["PROVISIONER_AGENT_TOKEN_FILE"]).unlink()
    code, log = await run_agent(rendered_agent(tmp_path), env, 10)
    assert code == 1 and "no agent credential" in log


async def test_agent_backs_off_while_the_scheduler_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, log = await run_agent(rendered_agent(tmp_path), agent_env(tmp_path, url, 4),
                                timeout=20)
    assert code == 0
    assert log.count("poll failed") == 4
    assert "next try in 1s" in log
    assert time.monotonic() - started >= 3.5  # 1 + 1 + 1 + 1 s (backoff capped at 1 here)


@pytest.mark.parametrize("answer", ["JOB x 10 nobody\necho pwned > ran\n", "HELLO\n",
                                    "JOB 5 -1 nobody\necho pwned > ran\n",
                                    "JOB 5 10 -c\necho pwned > ran\n",
                                    "JOB 5 10 ../x\necho pwned > ran\n",
                                    "JOB 5 10\necho pwned > ran\n",
                                    "KILL ../..\n"])
async def test_agent_refuses_a_malformed_answer(tmp_path: Path, answer: str) -> None:
    """A proxy or a wrong URL answering 200 must not make the agent run what it sent."""
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = answer.encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, log = await run_agent(rendered_agent(tmp_path),
                                    agent_env(tmp_path, f"http://127.0.0.1:{port}", 1), 20)
    finally:
        server.close()
        await server.wait_closed()
    assert code == 0
    assert "answer" in log and "started" not in log, log
    assert not list((tmp_path / "jobs").rglob("ran"))


async def test_agent_without_a_scheduler_url_exits_at_once(tmp_path: Path) -> None:
    env = agent_env(tmp_path, "", 0)  # 0: it would poll forever if it started
    code, log = await run_agent(rendered_agent(tmp_path), env, timeout=10)
    assert code == 0 and "no PROVISIONER_SCHEDULER_URL" in log


async def test_cancelling_a_running_job_kills_it_on_the_node(sched: SchedulerServer,
                                                             tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        job_id, = await _submit(client, [{"command": "sleep 50 & sleep 40; echo not killed"}])
        proc = await start_agent(rendered_agent(tmp_path), agent_env(tmp_path, sched.url, 60))
        try:
            pgid_file = tmp_path / "jobs" / job_id / "pgid"
            for _ in range(200):
                if pgid_file.exists() and pgid_file.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pgid = int(pgid_file.read_text())
            os.killpg(pgid, 0)  # the job's processes run
            cancelled = await client.delete(f"/sched/v1/jobs/{job_id}")
            assert cancelled.json()["state"] == "cancelled"
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, 9)
                await proc.wait()
    log = out.decode()
    assert f"job {job_id} cancelled: killed" in log, log
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the background `sleep 50` went too
    job = sched.state.job(job_id)
    assert job.state is JobState.CANCELLED and "not killed" not in job.output
