"""Node routes: create, get by MAC or name, pages and filters, patch (fields and lifecycle
states), delete, the timeline; with the uniform error bodies for every refusal."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from provisioner.nodes.model import BootEvent, MacAddress
from tests.api.conftest import Api, publish_image

MAC = "52:54:00:00:00:01"


async def _add(api: Api, mac: str, name: str, role: str = "operator",
               **extra: object) -> dict[str, object]:
    """Add a node as `role` (power_* settings need the admin role)."""
    response = await api.client.post("/api/v1/nodes", headers=api.auth(role),
                                     json={"mac": mac, "name": name, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_then_get_by_any_mac_form_or_name(api: Api) -> None:
    await api.client.post("/api/v1/groups", headers=api.admin,
                          json={"name": "compute", "settings": {"power_password": "pw"}})
    made = await _add(api, "52-54-00-00-00-01", "node001", ip="10.0.0.11", groups=["compute"],
                      role="admin", settings={"power_password": "secret", "console": "ttyS1"})
    assert made["mac"] == MAC and made["state"] == "registered"
    assert made["settings"] == {"console": "ttyS1", "power_password": "********"}
    for ref in (MAC, "5254.0000.0001", "node001"):
        response = await api.client.get(f"/api/v1/nodes/{ref}", headers=api.viewer)
        assert response.status_code == 200 and response.json()["name"] == "node001"
    assert "secret" not in (await api.client.get("/api/v1/nodes", headers=api.viewer)).text


async def test_create_refusals_say_what_is_wrong(api: Api) -> None:
    await _add(api, MAC, "node001")
    cases = [
        ({"mac": MAC, "name": "other"}, 409, "conflict", "already exists"),
        ({"mac": "52:54:00:00:00:02", "name": "node001"}, 409, "conflict", "belongs to node"),
        ({"mac": "zz", "name": "n2"}, 422, "invalid", "not a MAC address"),
        ({"mac": "52:54:00:00:00:03", "name": "-bad-"}, 422, "invalid", "RFC 1123"),
        ({"mac": "52:54:00:00:00:03", "name": "n3", "colour": "red"}, 422, "invalid",
         "colour"),
        ({"mac": "52:54:00:00:00:03", "name": "n3", "settings": {"colour": "red"}}, 422,
         "invalid", "unknown setting"),
        ({"mac": "52:54:00:00:00:03", "name": "n3", "groups": ["nope"]}, 404, "not_found",
         "group list"),
        ({"name": "n3"}, 422, "invalid", "mac: Field required"),
    ]
    for body, status, code, text in cases:
        response = await api.client.post("/api/v1/nodes", headers=api.operator, json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] == code and text in response.json()["message"], body


async def test_pages_and_filters(api: Api) -> None:
    for i in range(7):
        await _add(api, f"52:54:00:00:01:{i:02x}", f"n{i}", image="compute:2" if i % 2 else None,
                   groups=[])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/api/v1/nodes", headers=api.viewer, params=params)).json()
        seen += [n["name"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"n{i}" for i in range(7)]
    odd = (await api.client.get("/api/v1/nodes", headers=api.viewer,
                                params={"image": "compute"})).json()["items"]
    assert [n["name"] for n in odd] == ["n1", "n3", "n5"]
    none = await api.client.get("/api/v1/nodes", headers=api.viewer,
                                params={"state": "ready"})
    assert none.json() == {"items": [], "next_cursor": None}
    bad = await api.client.get("/api/v1/nodes", headers=api.viewer, params={"state": "cooked"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid"
    bad = await api.client.get("/api/v1/nodes", headers=api.viewer, params={"limit": 0})
    assert bad.status_code == 422


async def test_patch_changes_fields_and_moves_states_through_the_table(api: Api) -> None:
    await _add(api, MAC, "node001", ip="10.0.0.11")
    response = await api.client.patch("/api/v1/nodes/node001", headers=api.operator,
                                      json={"name": "node002", "ip": "", "image": "compute"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "node002" and response.json()["ip"] is None
    refused = await api.client.patch("/api/v1/nodes/node002", headers=api.operator,
                                     json={"state": "ready"})
    assert refused.status_code == 409
    assert refused.json() == {"error": "invalid_transition", "message":
                              "node node002 is registered: it cannot go to ready; from "
                              "registered it can go to: failed, provisioning, retired"}
    moved = await api.client.patch("/api/v1/nodes/node002", headers=api.operator,
                                   json={"state": "retired"})
    assert moved.json()["state"] == "retired"
    events = (await api.client.get("/api/v1/nodes/node002/events", headers=api.viewer)).json()
    assert events["events"][0]["kind"] == "retired"
    assert events["events"][0]["detail"]["reason"].startswith("set by token:operator-token")
    missing = await api.client.patch("/api/v1/nodes/nope", headers=api.operator, json={})
    assert missing.status_code == 404 and "provisioner node list" in missing.json()["message"]


async def test_delete(api: Api) -> None:
    await _add(api, MAC, "node001")
    response = await api.client.delete("/api/v1/nodes/node001", headers=api.operator)
    assert response.status_code == 200 and response.json()["mac"] == MAC
    again = await api.client.delete("/api/v1/nodes/node001", headers=api.operator)
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    assert [e.action for e in await api.ctx.audit.entries()][:2] == ["node.delete",
                                                                      "node.create"]


async def test_events_are_a_timeline_with_time_in_each_state(api: Api) -> None:
    await _add(api, MAC, "node001")
    inv, mac = api.ctx.inventory, MacAddress(MAC)
    await inv.add_event(BootEvent(mac, "dhcp_offered", api.clock.now - 5, {"ip": "10.0.0.9"}))
    await api.ctx.lifecycle.boot_script_served(mac, "compute", "1")
    api.clock.now += 30
    await api.ctx.lifecycle.booted(mac, {"cpus": 2, "memory_mib": 512}, "1")
    api.clock.now += 12
    body = (await api.client.get(f"/api/v1/nodes/{MAC}/events", headers=api.viewer)).json()
    assert body["state"] == "ready"
    rows = [(e["kind"], e["state"], e["duration"], e["offset"]) for e in body["events"]]
    assert rows == [("dhcp_offered", None, None, 0.0),
                    ("provisioning", "provisioning", pytest.approx(30.0), 5.0),
                    ("booted", "booted", 0.0, 35.0),
                    ("ready", "ready", pytest.approx(12.0), 35.0)]


async def test_power_without_a_driver_says_what_to_set(api: Api) -> None:
    await _add(api, MAC, "node001")
    response = await api.client.post("/api/v1/nodes/node001/power", headers=api.operator,
                                     json={"action": "status"})
    assert response.status_code == 502
    assert "power_driver" in response.json()["message"]
    bad = await api.client.post("/api/v1/nodes/node001/power", headers=api.operator,
                                json={"action": "explode"})
    assert bad.status_code == 422


async def test_power_through_the_manual_driver(api: Api) -> None:
    await _add(api, MAC, "node001", role="admin", settings={"power_driver": "manual"})
    response = await api.client.post("/api/v1/nodes/node001/power", headers=api.operator,
                                     json={"action": "cycle"})
    assert response.status_code == 200, response.text
    assert response.json()["node"] == "node001" and response.json()["action"] == "cycle"
    assert (await api.ctx.audit.entries())[0].action == "power.cycle"
    [event] = await api.ctx.inventory.list_events(MacAddress(MAC))
    assert (event.kind, event.at) == ("power_cycled", api.clock.now)  # nodes/retries.py
    assert event.detail["by"] == (await api.ctx.audit.entries())[0].who  # who cycled it


async def test_reimage_checks_nodes_and_image_then_runs_in_the_background(api: Api) -> None:
    missing = await api.client.post("/api/v1/reimage", headers=api.operator,
                                    json={"nodes": ["nope"], "image": "compute"})
    assert missing.status_code == 404
    await _add(api, MAC, "node001", role="admin", settings={"power_driver": "manual"})
    no_image = await api.client.post("/api/v1/reimage", headers=api.operator,
                                     json={"nodes": ["node001"], "image": "compute"})
    assert no_image.status_code == 404 and "image list" in no_image.json()["message"]
    bad = await api.client.post("/api/v1/reimage", headers=api.operator,
                                json={"nodes": [], "image": "compute"})
    assert bad.status_code == 422
    publish_image(api.ctx.catalog, "compute")
    started = await api.client.post("/api/v1/reimage", headers=api.operator, json={
        "nodes": ["node001"], "image": "compute", "force": True})
    assert started.status_code == 202, started.text
    rollout = started.json()["id"]
    shown = await api.client.get(f"/api/v1/reimage/{rollout}", headers=api.viewer)
    assert shown.status_code == 200 and shown.json()["image"] == "compute"
    assert "node001" in shown.json()["nodes"]
    latest = await api.client.get("/api/v1/reimage/latest", headers=api.viewer)
    assert latest.json()["id"] == rollout
    for task in list(api.ctx.tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
