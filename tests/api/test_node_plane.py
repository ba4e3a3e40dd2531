"""POST /node/v1/booted over every store backend: a good token boots the node once; wrong,
expired, replayed, another node's or no token all get the same 401 body, change nothing and
leave an audit entry."""

from __future__ import annotations

from typing import Any

from provisioner.model import MacAddress, Node, NodeState
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
    assert response.json() == {"state": "ready", "node": "node001", "mac": A.value}
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
    denied = [e for e in await api.ctx.audit.entries(action="boot_token.redeem")
              if e.outcome == "denied"]
    assert len(denied) == len(attempts)
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
