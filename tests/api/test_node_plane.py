"""POST /node/v1/booted over every store backend: a good token boots the node once; wrong,
expired, replayed, another node's or no token all get the same 401 body, change nothing and
leave an audit entry."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
from typing import Any

import httpx

from provisioner.api.app import create_app
from provisioner.api.routes.node import CallbackFastPath
from provisioner.boot.binding import AddressBinding
from provisioner.handoff.base import HandoffNode
from provisioner.handoff.outbox import HandoffQueue
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.store.base import TxnOp
from tests.api.conftest import Api

A = MacAddress("52:54:00:00:00:01")
B = MacAddress("52:54:00:00:00:02")
FACTS = {"cpus": 2, "memory_mib": 1024, "disks": [{"name": "vda", "size_bytes": 10 << 30}],
         "nics": [{"name": "eth0", "mac": A.value}], "bios_vendor": "SeaBIOS"}


def _body(mac: MacAddress, token: str) -> dict[str, Any]:
    return {"mac": mac.value, "token": token, "image": "compute", "version": "1", "facts": FACTS}


async def _provisioning(api: Api) -> tuple[str, str]:
    inv = api.ctx.inventory
    for mac, name in ((A, "node001"), (B, "node002")):
        await inv.add_node(Node(mac, name))
        await api.ctx.lifecycle.boot_script_served(mac, "compute", "1")
    ttl = api.ctx.settings.api.boot_token_ttl
    return (await api.ctx.boot_tokens.issue(A, ttl, api.clock()),
            await api.ctx.boot_tokens.issue(B, ttl, api.clock()))


async def test_the_callback_boots_the_node_and_stores_its_facts(store_api: Api) -> None:
    api = store_api
    token_a, _ = await _provisioning(api)
    response = await api.client.post("/node/v1/booted", json=_body(A, token_a))
    assert response.status_code == 200, response.text
    answer = response.json()
    credential = answer.pop("agent_token")
    assert answer == {"state": "ready", "node": "node001", "mac": A.value}
    # The node agent's credential: 256 random bits, URL-safe base64, stored nowhere in clear.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", credential)
    stored = b"".join(kv.value for kv in (await api.ctx.inventory.store.range("/")).items)
    assert credential.encode() not in stored
    node = (await api.ctx.inventory.get_node("node001")).value
    assert node.state is NodeState.READY
    assert node.hardware["cpus"] == 2 and node.hardware["bios_vendor"] == "SeaBIOS"
    assert node.hardware["disks"] == [{"name": "vda", "size_bytes": 10 << 30}]
    used = (await api.ctx.audit.entries(action="boot_token.redeem"))[0]
    assert used.outcome == "ok" and used.who == f"node:{A}"


async def test_every_bad_token_gets_the_same_401_and_changes_nothing(store_api: Api) -> None:
    api = store_api
    token_a, token_b = await _provisioning(api)
    good = await api.client.post("/node/v1/booted", json=_body(A, token_a))
    assert good.status_code == 200
    expired_mac = MacAddress("52:54:00:00:00:03")
    await api.ctx.inventory.add_node(Node(expired_mac, "node003", state=NodeState.PROVISIONING))
    expired = await api.ctx.boot_tokens.issue(expired_mac, 60, api.clock() - 61)
    attempts = {
        "replayed": _body(A, token_a),
        "other node's": _body(B, token_a),
        "wrong": _body(B, token_b[:-3] + "AAA"),
        "expired": _body(expired_mac, expired),
        "unknown node": _body(MacAddress("52:54:00:00:00:99"), token_b),
        "not a mac": {**_body(B, token_b), "mac": "nonsense"},
    }
    bodies = set()
    for what, body in attempts.items():
        response = await api.client.post("/node/v1/booted", json=body)
        assert response.status_code == 401, (what, response.text)
        bodies.add(response.text)
    assert len(bodies) == 1
    assert "reboot the node" in bodies.pop()
    assert (await api.ctx.inventory.get_node("node002")).value.state is NodeState.PROVISIONING
    assert (await api.ctx.inventory.get_node("node003")).value.state is NodeState.PROVISIONING
    assert (await api.ctx.inventory.get_node("node002")).value.hardware == {}
    await api.ctx.refused.flush(everything=True)  # refusals like an earlier one were counted
    denied = [e for e in await api.ctx.audit.entries(action="boot_token.redeem")
              if e.outcome == "denied"]
    assert sum(e.detail.get("refused", 1) for e in denied) == len(attempts)
    assert {e.detail["reason"] for e in denied} >= {"wrong token", "expired"}
    still = await api.client.post("/node/v1/booted", json=_body(B, token_b))
    assert still.status_code == 200  # the refusals did not burn node002's real token


async def test_bad_callback_bodies(store_api: Api) -> None:
    api = store_api
    missing = await api.client.post("/node/v1/booted", json={"mac": A.value})
    assert missing.status_code == 422 and "token" in missing.json()["message"]
    negative = await api.client.post("/node/v1/booted", json={
        **_body(A, "x"), "facts": {"cpus": -1}})
    assert negative.status_code == 422


async def test_concurrent_callbacks_with_one_token_boot_the_node_once(store_api: Api) -> None:
    """The token's redemption is a CAS delete inside the callback's txn: one commits, the
    others write nothing and get the 401 (audited as a replay)."""
    api = store_api
    token_a, _ = await _provisioning(api)
    responses = await asyncio.gather(
        *(api.client.post("/node/v1/booted", json=_body(A, token_a)) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401]
    booted = [e for e in await api.ctx.inventory.list_events(A) if e.kind == "booted"]
    assert len(booted) == 1
    await api.ctx.refused.flush(everything=True)  # the later replays were counted
    entries = await api.ctx.audit.entries(action="boot_token.redeem")
    assert [e.outcome for e in entries].count("ok") == 1
    assert sum(e.detail.get("refused", 1) for e in entries if e.outcome == "denied") == 3


async def test_an_accepted_callback_is_one_read_and_one_txn(api: Api) -> None:
    """Store round trips of the boot callback: the token read, then one txn (token, audit,
    node, event; with the handoff off, a second txn moves the node to ready)."""
    token_a, _ = await _provisioning(api)
    ticks = iter(range(1, 100))
    api.ctx.lifecycle.clock = lambda: api.clock.now + next(ticks)  # distinct event times
    store = api.ctx.inventory.store
    calls: list[str] = []
    for name in ("get", "range", "put", "delete", "txn"):
        original = getattr(store, name)

        def counted(*args: Any, _name: str = name, _original: Any = original,
                    **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(store, name, counted)
    response = await api.client.post("/node/v1/booted", json=_body(A, token_a))
    assert response.status_code == 200, response.text
    assert calls == ["get", "txn", "txn"]
    assert await store.get(keys.boot_token(A.value)) is None
    assert [e.kind for e in await api.ctx.inventory.list_events(A)][-2:] == ["booted", "ready"]


async def test_a_callback_for_a_retired_node_writes_nothing_and_keeps_the_token(
        api: Api) -> None:
    token_a, _ = await _provisioning(api)
    await api.ctx.lifecycle.fail(A, "test")
    await api.ctx.lifecycle.set_state(A, NodeState.RETIRED, reason="test")
    response = await api.client.post("/node/v1/booted", json=_body(A, token_a))
    assert response.status_code == 409
    assert await api.ctx.inventory.store.get(keys.boot_token(A.value))
    failed = (await api.ctx.audit.entries(action="boot_token.redeem"))[0]
    assert failed.outcome == "failed"


async def test_the_fast_path_answers_exactly_as_the_app_does(api: Api) -> None:
    """CallbackFastPath (what `provisioner serve` runs) against the plain FastAPI app: the
    same statuses and bodies for a good callback, a refusal, and bodies it hands over."""
    token_a, token_b = await _provisioning(api)
    app = create_app(api.ctx)
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=CallbackFastPath(app, api.ctx)),
                             base_url="http://api")
    async with fast:
        good = await fast.post("/node/v1/booted", json=_body(A, token_a))
        assert good.status_code == 200, good.text
        assert {**good.json(), "agent_token": ""} == {
            "state": "ready", "node": "node001", "mac": A.value, "agent_token": ""}
        assert len(good.json()["agent_token"]) == 43
        cases: list[dict[str, Any]] = [
            {"json": _body(A, token_a)},  # replayed
            {"json": _body(B, "wrong")},
            {"json": {"mac": B.value}},  # 422 from the app
            {"json": {**_body(B, token_b), "facts": {"cpus": -1}}},
            {"content": b"not json", "headers": {"content-type": "application/json"}},
            {"content": b"[" * 40 + b"]" * 40, "headers": {"content-type": "application/json"}},
            {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}},
            {"content": b"{}", "headers": {"content-type": "text/plain"}},
        ]
        for case in cases:
            ours = await fast.post("/node/v1/booted", **case)
            theirs = await api.client.post("/node/v1/booted", **case)
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), case
        assert (await fast.get("/healthz")).status_code == 200
        still = await fast.post("/node/v1/booted", json=_body(B, token_b))
        assert still.status_code == 200 and still.json()["node"] == "node002"
    assert {"booted", "ready"} <= {e.kind for e in await api.ctx.inventory.list_events(B)}


async def test_each_boot_gets_its_own_credential_and_only_its_hash_is_handed_over(
        api: Api) -> None:
    """The outbox entry (committed in the callback's txn) carries the SHA-256 of the answered
    credential; a refused callback answers none."""
    queued: list[HandoffNode] = []

    class Outbox:
        async def submit(self, node: HandoffNode) -> None:
            queued.append(node)

        def entry(self, node: HandoffNode) -> TxnOp:
            queued.append(node)
            return HandoffQueue.entry(node)

        def accepted(self, node: HandoffNode, revision: int) -> None:
            return None

        async def tried(self, mac: str, timeout: float) -> bool:
            return True

    api.ctx.lifecycle.handoff = Outbox()
    credentials: list[str] = []
    for _ in range(2):
        token_a, _ = await _provisioning(api) if not credentials else (await _reboot(api), "")
        answer = await api.client.post("/node/v1/booted", json=_body(A, token_a))
        assert answer.status_code == 200, answer.text
        credentials.append(answer.json()["agent_token"])
        assert queued[-1].agent_hash == hashlib.sha256(credentials[-1].encode()).hexdigest()
        entry = await api.ctx.inventory.store.get(keys.outbox(A.value))
        assert entry is not None
        assert json.loads(entry.value)["node"]["agent_hash"] == queued[-1].agent_hash
        assert credentials[-1] not in entry.value.decode()
    assert credentials[0] != credentials[1]
    refused = await api.client.post("/node/v1/booted", json=_body(A, "replayed"))
    assert refused.status_code == 401 and "agent_token" not in refused.text


async def _reboot(api: Api) -> str:
    await api.ctx.lifecycle.boot_script_served(A, "compute", "1")
    return await api.ctx.boot_tokens.issue(A, 600, api.clock())


async def test_a_token_copied_off_the_node_is_refused_from_another_address(api: Api) -> None:
    token_a, _ = await _provisioning(api)
    bound = {"address": ipaddress.IPv4Address("10.9.9.9")}  # the node's lease: not us
    api.ctx.binding = AddressBinding(lambda mac: bound["address"])
    for client in (api.client, httpx.AsyncClient(transport=httpx.ASGITransport(
            app=CallbackFastPath(create_app(api.ctx), api.ctx)), base_url="http://api")):
        stolen = await client.post("/node/v1/booted", json=_body(A, token_a))
        assert stolen.status_code == 403 and "only from its own address" in stolen.text
    assert api.ctx.refusals.total == 2
    node = (await api.ctx.inventory.get_node("node001")).value
    assert node.state is NodeState.PROVISIONING  # nothing happened: the token is still good
    bound["address"] = ipaddress.IPv4Address("127.0.0.1")  # the node itself calls back
    own = await api.client.post("/node/v1/booted", json=_body(A, token_a))
    assert own.status_code == 200, own.text
