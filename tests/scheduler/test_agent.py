"""The node agent (templates/overlay/etc/provisioner/agent.j2) run with busybox sh on this host
against a live scheduler on loopback: real busybox wget, real jobs, real reports."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from provisioner.render.environment import Renderer
from provisioner.scheduler.models import JobState
from provisioner.scheduler.service import SchedulerServer
from tests.support.etcd_server import free_port

AGENT = "overlay/etc/provisioner/agent.j2"
APPLETS = ("wget", "timeout", "sleep", "tail", "mkdir", "rm", "cat", "setsid")


def agent_env(tmp_path: Path, url: str, polls: int) -> dict[str, str]:
    """busybox applets first on PATH, so the agent runs with what the image has."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is needed (apt-get install busybox)"
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for applet in APPLETS:
        if not (bindir / applet).exists():
            (bindir / applet).symlink_to(busybox)
    env_file = tmp_path / "node.env"
    env_file.write_text(f"PROVISIONER_NODE=node001\nPROVISIONER_SCHEDULER_URL={url}/\n")
    return {"PATH": f"{bindir}:/usr/bin:/bin", "PROVISIONER_ENV_FILE": str(env_file),
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


async def test_agent_runs_jobs_and_reports_them(sched: SchedulerServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json={"cpus": 4, "memory_mib": 1024})
        jobs: list[dict[str, object]] = [
            {"command": "echo hello from job $PROVISIONER_JOB_ID; hostname > /dev/null"},
            {"script": '#!/bin/sh\necho "it\'s & <odd> %20 \\"q\\"" >&2\nexit 3\n'},
            {"command": "sleep 30", "walltime": 1},
        ]
        for body in jobs:
            await client.post("/sched/v1/jobs", json={"cpus": 1, "memory_mib": 10,
                                                      "walltime": 60, **body})
    started = time.monotonic()
    code, log = await run_agent(rendered_agent(tmp_path), agent_env(tmp_path, sched.url, 25),
                                timeout=30)
    assert code == 0, log
    one, two, three = (sched.state.job(i) for i in (1, 2, 3))
    assert (one.state, one.exit_code, one.output) == (JobState.COMPLETED, 0, "hello from job 1\n")
    assert (two.state, two.exit_code) == (JobState.FAILED, 3)
    assert two.output == 'it\'s & <odd> %20 "q"\n'
    assert (three.state, three.exit_code) == (JobState.FAILED, 137)  # killed at its walltime
    assert sched.state.node("node001").last_seen > 0
    assert "job 1 reported (exit 0)" in log
    assert time.monotonic() - started < 20


async def test_agent_backs_off_while_the_scheduler_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, log = await run_agent(rendered_agent(tmp_path), agent_env(tmp_path, url, 4), timeout=20)
    assert code == 0
    assert log.count("poll failed") == 4
    assert "next try in 1s" in log
    assert time.monotonic() - started >= 3.5  # 1 + 1 + 1 + 1 s (backoff capped at 1 here)


@pytest.mark.parametrize("answer", ["JOB x 10\necho pwned > ran\n", "HELLO\n",
                                    "JOB 5 -1\necho pwned > ran\n"])
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
        await client.put("/sched/v1/nodes/node001", json={"cpus": 1, "memory_mib": 64})
        await client.post("/sched/v1/jobs", json={
            "cpus": 1, "memory_mib": 1, "walltime": 60,
            "command": "sleep 50 & sleep 40; echo not killed"})
        proc = await start_agent(rendered_agent(tmp_path), agent_env(tmp_path, sched.url, 60))
        try:
            pgid_file = tmp_path / "jobs" / "1" / "pgid"
            for _ in range(200):
                if pgid_file.exists() and pgid_file.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pgid = int(pgid_file.read_text())
            os.killpg(pgid, 0)  # the job's processes run
            cancelled = await client.delete("/sched/v1/jobs/1")
            assert cancelled.json()["state"] == "cancelled"
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, 9)
                await proc.wait()
    log = out.decode()
    assert "job 1 cancelled: killed" in log, log
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # the background `sleep 50` went too
    job = sched.state.job(1)
    assert job.state is JobState.CANCELLED and "not killed" not in job.output
