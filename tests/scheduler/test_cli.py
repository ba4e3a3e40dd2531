"""`provisioner scheduler ...` end to end: a real `scheduler serve` process and the CLI verbs."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.lab.netns import stop_process
from tests.support.etcd_server import free_port


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = subprocess.run([sys.executable, "-m", "provisioner", "scheduler", *args],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]
    return result.stdout


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PROVISIONER_DATA_DIR": str(tmp_path / "data"),
            "PROVISIONER_CONFIG": "", "PROVISIONER_SCHEDULER_PORT": str(free_port())}


@contextlib.contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{env['PROVISIONER_SCHEDULER_PORT']}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "scheduler", "serve"],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/healthz", timeout=1.0)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.05)
        yield url
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with serving(env, tmp_path) as url:
        yield url


def test_a_stopped_scheduler_is_one_line_with_what_to_do(env: dict[str, str]) -> None:
    line = run(env, "nodes", code=1)
    assert "is not answering; start it with `provisioner scheduler serve`" in line


def test_submit_list_cancel_drain_resume(env: dict[str, str], served: str,
                                         tmp_path: Path) -> None:
    httpx.put(served + "/sched/v1/nodes/node001", json={"cpus": 2, "memory_mib": 1024})
    table = run(env, "nodes").splitlines()
    assert table[0].split()[:3] == ["NAME", "STATE", "CPUS"]
    assert table[1].split()[:3] == ["node001", "idle", "2"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    said = run(env, "submit", "--cpus", "8", "--mem", "10", "--walltime", "60",
               "--priority", "5", "--user", "ann", "--script", str(script))
    first = re.fullmatch(r"submitted job ([0-9a-f]{16})\n", said)
    assert first, said
    second = json.loads(run(env, "submit", "--command", "true", "--user", "bob", "--json"))
    jobs = json.loads(run(env, "jobs", "--json"))
    assert [j["id"] for j in jobs] == [first[1], second["id"]]  # in submission order
    assert (jobs[0]["user"], jobs[0]["script"]) == ("ann", script.read_text())
    for _ in range(100):  # the dispatcher starts job 2 within its interval
        if json.loads(run(env, "jobs", "--json", "--state", "running")):
            break
        time.sleep(0.1)
    assert [j["id"] for j in json.loads(run(env, "jobs", "--json", "--state", "running"))] == [
        second["id"]]
    pending = run(env, "jobs", "--state", "pending").splitlines()
    assert pending[1].split()[:2] == [first[1], "pending"] and "no schedulable node" in pending[1]
    assert run(env, "cancel", first[1]) == f"job {first[1]} cancelled\n"
    assert "not a job id" in run(env, "cancel", "../nodes/node001", code=2)
    assert "no job" in run(env, "cancel", f"{int(first[1], 16) + 1:016x}", code=4)
    # By default a job is the caller's; these tests run as root, and root needs --as-root.
    assert getpass.getuser() != "root" or "as_root" in run(env, "submit", "--command", "x",
                                                         code=2)
    assert "not both" in run(env, "submit", "--command", "x", "--user", "a", "--as-root",
                             code=2)
    # Without a [scheduler] token there is no admin, so no root job.
    assert "admin token" in run(env, "submit", "--command", "x", "--as-root", code=1)
    assert run(env, "drain", "node001", "--reason", "fan") == "node001 draining\n"
    assert run(env, "resume", "node001") == "node001 mixed\n"  # job 2 still runs
    assert "no node 'ghost'" in run(env, "drain", "ghost", "--reason", "x", code=4)
    assert "cpus" in run(env, "submit", "--cpus", "0", "--command", "x", code=2)
    assert "exactly one" in run(env, "submit", code=2)
    # With sqlite the scheduler keeps its own file (two writer processes on one file wait on
    # each other's lock); the appliance's store.db is untouched by it.
    assert (Path(env["PROVISIONER_DATA_DIR"]) / "scheduler.db").is_file()
    assert not (Path(env["PROVISIONER_DATA_DIR"]) / "store.db").exists()


def test_serve_on_a_taken_port_is_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = run(env, "serve", "--port", str(port), code=2)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


def test_serving_beyond_loopback_needs_a_token(env: dict[str, str]) -> None:
    line = run(env, "serve", "--listen", "0.0.0.0", code=2)
    assert "PROVISIONER_SCHEDULER_TOKEN" in line


def test_the_cli_sends_the_token(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "PROVISIONER_SCHEDULER_TOKEN": "cli-secret"}
    url = f"http://127.0.0.1:{env['PROVISIONER_SCHEDULER_PORT']}"
    with serving(env, tmp_path):
        said = run(env, "submit", "--command", "true", "--as-root", "--json")
        assert json.loads(said)["user"] == "root"
        refused = httpx.get(url + "/sched/v1/jobs")
        assert refused.status_code == 401
        line = run({**env, "PROVISIONER_SCHEDULER_TOKEN": "wrong"}, "jobs", code=1)
        assert "Bearer" in line
