"""The agent routes over real HTTP: poll and done need the agent credential of the node
concerned; every refusal is the same 401, logged with the requester's address, and changes
nothing. Jobs name the user they run as; root needs as_root and the admin token. Job ids are
random."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import httpx
import pytest

from provisioner.scheduler.models import JobState
from provisioner.scheduler.service import SchedulerServer
from provisioner.store.sqlite import SqliteStore
from tests.scheduler.agents import AgentCredential
from tests.scheduler.test_app import wait_for

ONE, TWO = AgentCredential.new(), AgentCredential.new()


async def _two_nodes(client: httpx.AsyncClient) -> None:
    for name, agent in (("node001", ONE), ("node002", TWO)):
        put = await client.put(f"/sched/v1/nodes/{name}",
                               json={"cpus": 1, "memory_mib": 64, "agent_hash": agent.hash})
        assert put.status_code == 200, put.text


async def _running_on(client: httpx.AsyncClient, node: str) -> str:
    """A job the dispatcher started on `node` (the other node is drained meanwhile)."""
    other = "node002" if node == "node001" else "node001"
    await client.post(f"/sched/v1/nodes/{other}/drain", json={"reason": "test"})
    made = await client.post("/sched/v1/jobs", json={
        "cpus": 1, "memory_mib": 1, "walltime": 60, "user": "ann", "command": "secret-cmd"})
    job_id: str = made.json()["id"]
    job = await wait_for(client, job_id, "running")
    assert job["node"] == node
    await client.post(f"/sched/v1/nodes/{other}/resume")
    return job_id


async def test_a_poll_needs_the_nodes_own_credential(
        sched: SchedulerServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "provisioner.scheduler")
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await _two_nodes(client)
        job_id = await _running_on(client, "node001")
        seen_before = sched.state.node("node001").last_seen
        attempts = {
            "none": {},
            "wrong": {"Authorization": f"Bearer {ONE.token[:-2]}AA"},
            "another node's": TWO.headers,
            "the hash itself": {"Authorization": f"Bearer {ONE.hash}"},
            "not bearer": {"Authorization": f"Basic {ONE.token}"},
        }
        bodies = set()
        for what, headers in attempts.items():
            refused = await client.post("/sched/v1/nodes/node001/poll",
                                        params={"format": "text"}, headers=headers)
            assert refused.status_code == 401, (what, refused.text)
            assert "secret-cmd" not in refused.text
            bodies.add(refused.text)
        unknown = await client.post("/sched/v1/nodes/ghost/poll", headers=ONE.headers)
        assert unknown.status_code == 401
        bodies.add(unknown.text)
        assert len(bodies) == 1, bodies  # one answer, whatever the reason
        # Nothing happened: the job was not handed over and the node was not seen.
        assert not sched.state.job(job_id).delivered
        assert sched.state.node("node001").last_seen == seen_before
        assert "node001" not in sched.state.seen
        own = await client.post("/sched/v1/nodes/node001/poll", params={"format": "text"},
                                headers=ONE.headers)
        assert own.text == f"JOB {job_id} 60 ann\nsecret-cmd\n"
        # node002's own credential works for node002 only, which has no job.
        assert (await client.post("/sched/v1/nodes/node002/poll",
                                  headers=TWO.headers)).status_code == 204
    # All from one address: one line (with it), the rest counted for the next line.
    refusals = [r for r in caplog.records if "agent request" in r.getMessage()]
    assert len(refusals) == 1 and "refused from 127.0.0.1" in refusals[0].getMessage()
    logged = caplog.text
    assert ONE.token not in logged and ONE.token[:-2] not in logged and TWO.token not in logged


async def test_done_is_only_for_jobs_of_the_callers_node(sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await _two_nodes(client)
        job_id = await _running_on(client, "node001")
        forged = [
            ({}, job_id),  # no credential
            (TWO.headers, job_id),  # another node's: a forged end of node001's job
            ({"Authorization": "Bearer x"}, job_id),
        ]
        texts = set()
        for headers, target in forged:
            refused = await client.post(f"/sched/v1/jobs/{target}/done",
                                        params={"exit_code": 0}, content=b"fake",
                                        headers=headers)
            assert refused.status_code == 401
            texts.add(refused.text)
            refused_json = await client.post(f"/sched/v1/jobs/{target}/done",
                                             json={"exit_code": 0}, headers=headers)
            assert refused_json.status_code == 401
        # A guessed id, with a valid credential: the same 401, so ids cannot be probed.
        for guess in (f"{int(job_id, 16) + 1:016x}", "0000000001", "0000000002", "x" * 16):
            probe = await client.post(f"/sched/v1/jobs/{guess}/done", params={"exit_code": 0},
                                      headers=ONE.headers)
            assert probe.status_code == 401
            texts.add(probe.text)
        assert len(texts) == 1
        job = sched.state.job(job_id)
        assert job.state is JobState.RUNNING and job.output == "" and job.exit_code is None
        real = await client.post(f"/sched/v1/jobs/{job_id}/done", params={"exit_code": 4},
                                 content=b"out", headers=ONE.headers)
        assert real.json()["state"] == "failed" and real.json()["exit_code"] == 4


async def test_a_new_boot_replaces_the_credential(sched: SchedulerServer) -> None:
    """A registration with a new hash (the handoff of a new boot) retires the old credential;
    a registration without one (by hand) keeps it."""
    old, new = AgentCredential.new(), AgentCredential.new()
    async with httpx.AsyncClient(base_url=sched.url) as client:
        node = {"cpus": 1, "memory_mib": 64}
        await client.put("/sched/v1/nodes/node001", json={**node, "agent_hash": old.hash})
        assert (await client.post("/sched/v1/nodes/node001/poll",
                                  headers=old.headers)).status_code == 204
        job_id = (await client.post("/sched/v1/jobs", json={
            "cpus": 1, "memory_mib": 1, "walltime": 60, "user": "ann",
            "command": "true"})).json()["id"]
        await wait_for(client, job_id, "running")
        await client.put("/sched/v1/nodes/node001", json={**node, "agent_hash": new.hash})
        replayed = await client.post("/sched/v1/nodes/node001/poll", headers=old.headers)
        assert replayed.status_code == 401
        late = await client.post(f"/sched/v1/jobs/{job_id}/done", params={"exit_code": 0},
                                 headers=old.headers)
        assert late.status_code == 401
        assert not sched.state.job(job_id).delivered
        await client.put("/sched/v1/nodes/node001", json=node)  # by hand: keeps `new`
        assert (await client.post("/sched/v1/nodes/node001/poll",
                                  headers=new.headers)).status_code == 200
        assert (await client.post("/sched/v1/nodes/node001/poll",
                                  headers=old.headers)).status_code == 401
        bad = await client.put("/sched/v1/nodes/node001",
                               json={**node, "agent_hash": "not-a-hash"})
        assert bad.status_code == 422


async def test_a_node_without_a_credential_gets_no_work(sched: SchedulerServer) -> None:
    """Registered by hand, never booted through the appliance: no credential matches."""
    async with httpx.AsyncClient(base_url=sched.url) as client:
        await client.put("/sched/v1/nodes/node001", json={"cpus": 1, "memory_mib": 64})
        for headers in ({}, {"Authorization": "Bearer x"}, ONE.headers):
            polled = await client.post("/sched/v1/nodes/node001/poll", headers=headers)
            assert polled.status_code == 401
        shown = (await client.get("/sched/v1/nodes/node001")).json()
        assert shown["agent"] is False


async def test_a_job_names_its_user_and_root_needs_as_root(sched: SchedulerServer) -> None:
    """The `sched` scheduler has no admin token: it runs no root job at all."""
    base: dict[str, object] = {"cpus": 1, "memory_mib": 1, "walltime": 9, "command": "id"}
    async with httpx.AsyncClient(base_url=sched.url) as client:
        ok = await client.post("/sched/v1/jobs", json={**base, "user": "ann"})
        assert ok.status_code == 201 and ok.json()["user"] == "ann"
        cases: dict[str, tuple[dict[str, object], int, str]] = {
            "no user": ({}, 422, "as_root"),
            "root by name": ({"user": "root"}, 422, "as_root"),
            "an option to su": ({"user": "-c"}, 422, "not a user name"),
            "a path": ({"user": "../etc"}, 422, "not a user name"),
            "a space": ({"user": "ann bob"}, 422, "not a user name"),
            "both": ({"user": "ann", "as_root": True}, 403, "admin token"),
            "as_root without an admin token": ({"as_root": True}, 403, "[scheduler] token"),
        }
        for what, (extra, status, words) in cases.items():
            refused = await client.post("/sched/v1/jobs", json={**base, **extra})
            assert refused.status_code == status, (what, refused.text)
            assert words in refused.json()["message"], (what, refused.text)
    assert [j.user for j in sched.state.job_list()] == ["ann"]


async def test_as_root_needs_the_admin_token(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    server = SchedulerServer(store, "127.0.0.1", 0, token="adm1n")
    await server.start()
    admin = {"Authorization": "Bearer adm1n"}
    base = {"cpus": 1, "memory_mib": 1, "walltime": 9, "command": "id"}
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.post("/sched/v1/jobs", json={**base, "as_root": True},
                                        headers=ONE.headers)  # an agent's is not an admin's
            assert refused.status_code == 401
            made = await client.post("/sched/v1/jobs", json={**base, "as_root": True},
                                     headers=admin)
            assert made.status_code == 201 and made.json()["user"] == "root"
            both = await client.post("/sched/v1/jobs", headers=admin,
                                     json={**base, "as_root": True, "user": "ann"})
            assert both.status_code == 422 and "not both" in both.json()["message"]
    finally:
        await server.stop()
        await store.close()


async def test_job_ids_are_random_and_lists_keep_submission_order(
        sched: SchedulerServer) -> None:
    async with httpx.AsyncClient(base_url=sched.url) as client:
        ids = []
        for n in range(40):
            made = await client.post("/sched/v1/jobs", json={
                "cpus": 1, "memory_mib": 1, "walltime": 9, "user": "ann", "command": f"c{n}"})
            ids.append(made.json()["id"])
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
        assert len(set(ids)) == len(ids)
        numbers = [int(i, 16) for i in ids]
        assert numbers != sorted(numbers)  # 40 random ids in order: 1 in 40!
        assert not any(abs(b - a) < 1 << 32 for a, b in itertools.pairwise(numbers))
        listed = (await client.get("/sched/v1/jobs")).json()
        assert [j["id"] for j in listed] == ids
        assert [j["command"] for j in listed] == [f"c{n}" for n in range(40)]
        for guess in (f"{numbers[0] + 1:016x}", f"{numbers[-1] - 1:016x}", "0000000001"):
            assert (await client.get(f"/sched/v1/jobs/{guess}")).status_code == 404
            assert (await client.delete(f"/sched/v1/jobs/{guess}")).status_code == 404
