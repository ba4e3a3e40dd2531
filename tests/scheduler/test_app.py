"""The scheduler's REST API over real HTTP on loopback: every route, its errors, the cap."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from provisioner.scheduler.service import SchedulerServer
from provisioner.store.sqlite import SqliteStore
from tests.scheduler.agents import AgentCredential

AGENT = AgentCredential.new()
NODE = {"cpus": 4, "memory_mib": 4096, "features": ["ib"], "partition": "batch",
        "mac": "52:54:00:00:00:01", "agent_hash": AGENT.hash}


async def wait_for(client: httpx.AsyncClient, job_id: str, state: str) -> dict[str, object]:
    for _ in range(200):
        job: dict[str, object] = (await client.get(f"/sched/v1/jobs/{job_id}")).json()
        if job["state"] == state:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {state}: {job}")


async def test_register_list_drain_resume(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        put = await client.put("/sched/v1/nodes/node001", json=NODE)
        assert put.status_code == 200 and put.json()["cpus"] == 4
        assert put.json()["agent"] is True and "agent_hash" not in put.json()  # never shown
        assert (await client.put("/sched/v1/nodes/node001", json=NODE)).status_code == 200
        nodes = (await client.get("/sched/v1/nodes")).json()
        assert [(n["name"], n["state"], n["partition"]) for n in nodes] == [
            ("node001", "idle", "batch")]
        drained = await client.post("/sched/v1/nodes/node001/drain", json={"reason": "fan"})
        assert drained.json()["state"] == "drained" and drained.json()["reason"] == "fan"
        resumed = await client.post("/sched/v1/nodes/node001/resume")
        assert resumed.json()["state"] == "idle"


async def test_jobs_run_through_poll_and_done(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        made = await client.post("/sched/v1/jobs", json={
            "cpus": 4, "memory_mib": 100, "walltime": 60, "user": "ann", "command": "hostname"})
        assert made.status_code == 201
        job_id = made.json()["id"]
        await wait_for(client, job_id, "running")
        node = (await client.get("/sched/v1/nodes/node001")).json()
        assert node["state"] == "allocated"
        polled = await client.post("/sched/v1/nodes/node001/poll", params={"format": "text"},
                                   headers=AGENT.headers)
        assert polled.text == f"JOB {job_id} 60 ann\nhostname\n"
        assert (await client.post("/sched/v1/nodes/node001/poll",
                                  headers=AGENT.headers)).status_code == 204
        done = await client.post(f"/sched/v1/jobs/{job_id}/done", params={"exit_code": 0},
                                 content=b"node001\n", headers=AGENT.headers)
        assert done.json()["state"] == "completed" and done.json()["output"] == "node001\n"
        listed = (await client.get("/sched/v1/jobs", params={"state": "completed"})).json()
        assert [j["id"] for j in listed] == [job_id]


async def test_a_raw_output_tail_may_hold_any_brackets(sched: SchedulerServer) -> None:
    """The body cap does not check JSON nesting here: the agent's output is not JSON."""
    tail = "[" * 100 + "{" * 100 + "\n"
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        job_id = (await client.post("/sched/v1/jobs", json={
            "cpus": 1, "memory_mib": 1, "walltime": 60, "user": "ann",
            "command": "dump"})).json()["id"]
        await wait_for(client, job_id, "running")
        await client.post("/sched/v1/nodes/node001/poll", params={"format": "text"},
                          headers=AGENT.headers)
        for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
            done = await client.post(f"/sched/v1/jobs/{job_id}/done", params={"exit_code": 3},
                                     content=tail.encode(), headers={**headers, **AGENT.headers})
            assert done.status_code == 200, done.text
            assert done.json()["output"] == tail and done.json()["exit_code"] == 3


async def test_json_done_and_cancel(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json=NODE)
        made = (await client.post("/sched/v1/jobs", json={
            "cpus": 1, "memory_mib": 1, "walltime": 5, "user": "ann",
            "script": "#!/bin/sh\ntrue\n"})).json()
        await wait_for(client, made["id"], "running")
        cancelled = await client.delete(f"/sched/v1/jobs/{made['id']}")
        assert cancelled.json()["state"] == "cancelled"
        done = await client.post(f"/sched/v1/jobs/{made['id']}/done",
                                 json={"exit_code": 1, "output": "late"}, headers=AGENT.headers)
        assert done.json()["state"] == "cancelled"  # a cancelled job stays cancelled


async def test_errors_have_one_shape(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        cases = [
            (await client.get("/sched/v1/nodes/ghost"), 404, "not_found"),
            (await client.delete("/sched/v1/jobs/99"), 404, "not_found"),
            (await client.put("/sched/v1/nodes/n1", json={"cpus": 0, "memory_mib": 1}),
             422, "invalid"),
            (await client.put("/sched/v1/nodes/Bad_Name!", json=NODE), 422, "invalid"),
            (await client.post("/sched/v1/jobs", json={"cpus": 1, "memory_mib": 1,
                                                       "walltime": 1}), 422, "invalid"),
            (await client.get("/sched/v1/jobs", params={"state": "odd"}), 422, "invalid"),
            (await client.post("/sched/v1/jobs/1/done", content=b"x"), 401, "unauthorized"),
            (await client.get("/sched/v1/jobs/Not-An-Id"), 404, "not_found"),
            (await client.get("/nope"), 404, "not_found"),
            (await client.put("/sched/v1/nodes/n1", content=b"x" * (2 << 20)), 413,
             "too_large"),
            (await client.post("/sched/v1/nodes/n1/drain", json={}), 422, "invalid"),
            (await client.put("/sched/v1/nodes/n1", content=b'{"cpus": ',
                              headers={"content-type": "application/json"}), 400, "bad_json"),
            (await client.patch("/sched/v1/jobs"), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert (response.status_code, response.json()["error"]) == (status, code), \
                response.text
            assert response.json()["message"]


async def test_chunked_body_over_the_cap_is_refused(sched: SchedulerServer) -> None:
    async def chunks() -> object:
        for _ in range(40):
            yield b"x" * 65536

    async with httpx.AsyncClient(base_url=sched.url) as client:
        response = await client.post("/sched/v1/jobs", content=chunks(),  # type: ignore[arg-type]
                                     headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"


async def test_openapi_lists_every_route(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        paths = set((await client.get("/openapi.json")).json()["paths"])
    assert {"/sched/v1/nodes/{name}", "/sched/v1/nodes", "/sched/v1/nodes/{name}/drain",
            "/sched/v1/nodes/{name}/resume", "/sched/v1/jobs", "/sched/v1/jobs/{job_id}",
            "/sched/v1/nodes/{name}/poll", "/sched/v1/jobs/{job_id}/done"} <= paths


async def test_answers_are_not_held_by_nagle(sched: SchedulerServer) -> None:
    """With Nagle's algorithm on, every answer waited 40-44 ms here for the client's delayed
    ACK. asyncio turns TCP_NODELAY on only for sockets whose proto is IPPROTO_TCP, and
    accepted connections inherit the listening socket's proto, so check that at the source."""
    assert sched._server is not None
    listening = [s for server in sched._server.servers for s in server.sockets]
    assert listening and all(s.proto == socket.IPPROTO_TCP for s in listening)


async def test_with_a_token_the_agent_routes_take_the_agent_credential(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path / "store.db")
    server = SchedulerServer(store, "127.0.0.1", 0, token="s3cret")
    await server.start()
    good = {"Authorization": "Bearer s3cret"}
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for headers in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "s3cret"}):
                refused = await client.put("/sched/v1/nodes/n1", json=NODE, headers=headers)
                assert refused.status_code == 401
                assert refused.json()["error"] == "unauthorized"
                assert refused.headers["www-authenticate"] == "Bearer"  # RFC 9110 15.5.2
            # Logged with the address, once for the three (web/refusals.py).
            assert caplog.text.count("refused from 127.0.0.1: PUT '/sched/v1/nodes/n1'") == 1
            # RFC 9110 section 11.1: the scheme name is case-insensitive.
            assert (await client.get("/sched/v1/jobs", headers={
                "Authorization": "bearer s3cret"})).status_code == 200
            assert (await client.post("/sched/v1/jobs", json={
                "cpus": 1, "memory_mib": 1, "walltime": 9, "user": "ann",
                "command": "id"})).status_code == 401
            assert (await client.get("/sched/v1/jobs")).status_code == 401
            assert (await client.put("/sched/v1/nodes/n1", json=NODE,
                                     headers=good)).status_code == 200
            job = await client.post("/sched/v1/jobs", headers=good, json={
                "cpus": 1, "memory_mib": 1, "walltime": 9, "as_root": True, "command": "id"})
            assert job.status_code == 201 and job.json()["user"] == "root"
            job_id = job.json()["id"]
            await wait_for_state(client, job_id, "running", good)
            # The node agent has no admin token, and the admin token is not an agent's.
            for headers in ({}, good):
                refused = await client.post("/sched/v1/nodes/n1/poll", headers=headers)
                assert refused.status_code == 401
            polled = await client.post("/sched/v1/nodes/n1/poll", params={"format": "text"},
                                       headers=AGENT.headers)
            assert polled.text.startswith(f"JOB {job_id} 9 root\n")
            done = await client.post(f"/sched/v1/jobs/{job_id}/done", params={"exit_code": 0},
                                     headers=AGENT.headers)
            assert done.json()["state"] == "completed"
            assert (await client.get("/healthz")).status_code == 200
            schema = (await client.get("/openapi.json")).json()
            assert "401" in schema["paths"]["/sched/v1/jobs"]["post"]["responses"]
    finally:
        await server.stop()
        await store.close()


async def wait_for_state(client: httpx.AsyncClient, job_id: str, state: str,
                         headers: dict[str, str]) -> None:
    for _ in range(200):
        if (await client.get(f"/sched/v1/jobs/{job_id}", headers=headers)).json()[
                "state"] == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {state}")
