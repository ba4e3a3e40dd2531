"""POST /node/v1/init-started over every store backend: /init of a systemd image reports that
it is up before it execs systemd. It is checked like the boot callback (the node's address, its
one-boot token, the same 401 for every bad token) but does not use the token up; it only puts
`init_started` between `provisioning` and `booted` on the timeline."""

from __future__ import annotations

import ipaddress
from typing import Any

from provisioner.boot.binding import AddressBinding
from provisioner.nodes.model import MacAddress, Node, NodeState
from tests.api.conftest import Api

A = MacAddress("52:54:00:00:00:01")
B = MacAddress("52:54:00:00:00:02")
PATH = "/node/v1/init-started"


def _body(mac: MacAddress | str, token: str) -> dict[str, Any]:
    return {"mac": str(mac), "token": token, "image": "debian", "version": "2"}


async def _provisioning(api: Api) -> tuple[str, str]:
    for mac, name in ((A, "node001"), (B, "node002")):
        await api.ctx.inventory.add_node(Node(mac, name))
        await api.ctx.lifecycle.boot_script_served(mac, "debian", "2")
    ttl = api.ctx.settings.api.boot_token_ttl
    return (await api.ctx.boot_tokens.issue(A, ttl, api.clock()),
            await api.ctx.boot_tokens.issue(B, ttl, api.clock()))


async def _kinds(api: Api, mac: MacAddress) -> list[str]:
    return [e.kind for e in await api.ctx.inventory.list_events(mac)]


async def test_init_started_goes_on_the_timeline_and_keeps_the_token(store_api: Api) -> None:
    api = store_api
    token_a, _ = await _provisioning(api)
    answer = await api.client.post(PATH, json=_body(A, token_a))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"state": "provisioning", "node": "node001", "mac": A.value}
    events = await api.ctx.inventory.list_events(A)
    started = events[-1]
    assert started.kind == "init_started"
    assert started.detail["from"] == "provisioning" and started.detail["version"] == "2"
    assert (await api.ctx.lifecycle.pending()).keys() == {A.value, B.value}  # clock runs on
    booted = await api.client.post("/node/v1/booted", json={**_body(A, token_a), "facts": {}})
    assert booted.status_code == 200, booted.text
    kinds = await _kinds(api, A)
    assert kinds.index("init_started") < kinds.index("booted") < kinds.index("ready")


async def test_bad_tokens_get_the_callbacks_401_and_write_no_event(store_api: Api) -> None:
    api = store_api
    token_a, token_b = await _provisioning(api)
    before = await _kinds(api, A)
    bodies = [_body(A, "wrong"), _body(A, token_b), _body("not-a-mac", token_a),
              _body("52:54:00:00:00:09", token_a)]
    answers = [await api.client.post(PATH, json=body) for body in bodies]
    assert {a.status_code for a in answers} == {401}, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1  # one body, whatever the reason
    assert await _kinds(api, A) == before
    refusals = await api.ctx.audit.entries(action="boot_token.check")
    assert refusals and all(e.outcome != "ok" for e in refusals)


async def test_from_another_address_it_is_refused_and_nothing_is_written(api: Api) -> None:
    token_a, _ = await _provisioning(api)
    bound = {"address": ipaddress.IPv4Address("10.9.9.9")}  # the node's lease: not us
    api.ctx.binding = AddressBinding(lambda mac: bound["address"])
    before = await _kinds(api, A)
    stolen = await api.client.post(PATH, json=_body(A, token_a))
    assert stolen.status_code == 403 and "only from its own address" in stolen.text
    assert api.ctx.refusals.total == 1 and await _kinds(api, A) == before
    bound["address"] = ipaddress.IPv4Address("127.0.0.1")  # the node itself
    assert (await api.client.post(PATH, json=_body(A, token_a))).status_code == 200


async def test_a_node_that_is_not_provisioning_gets_409(api: Api) -> None:
    token_a, _ = await _provisioning(api)
    await api.ctx.lifecycle.set_state(A, NodeState.REGISTERED, reason="reset")
    before = await _kinds(api, A)
    answer = await api.client.post(PATH, json=_body(A, token_a))
    assert answer.status_code == 409, answer.text
    assert await _kinds(api, A) == before
