"""Groups, images, leases, settings, counters and the audit log through the admin API."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Lease, MacAddress
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings, publish_image


async def test_group_crud_with_secrets_redacted(api: Api) -> None:
    made = await api.client.post("/api/v1/groups", headers=api.admin, json={
        "name": "compute", "description": "the racks",
        "settings": {"power_password": "pw", "callback_timeout": 120}})
    assert made.status_code == 201
    assert made.json()["settings"] == {"callback_timeout": 120, "power_password": "********"}
    again = await api.client.post("/api/v1/groups", headers=api.admin, json={"name": "compute"})
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    patched = await api.client.patch("/api/v1/groups/compute", headers=api.admin,
                                     json={"description": "racks 1-4"})
    assert patched.json()["description"] == "racks 1-4"
    assert patched.json()["settings"]["callback_timeout"] == 120
    await api.client.post("/api/v1/nodes", headers=api.operator, json={
        "mac": "52:54:00:00:00:01", "name": "n1", "groups": ["compute"]})
    busy = await api.client.delete("/api/v1/groups/compute", headers=api.admin)
    assert busy.status_code == 409 and "n1" in busy.json()["message"]
    await api.client.delete("/api/v1/nodes/n1", headers=api.operator)
    gone = await api.client.delete("/api/v1/groups/compute", headers=api.admin)
    assert gone.status_code == 204
    listed = await api.client.get("/api/v1/groups", headers=api.viewer)
    assert listed.json() == []
    bad = await api.client.get("/api/v1/groups/Bad%20Name", headers=api.viewer)
    assert bad.status_code == 422


async def test_images_list_show_and_set_current(api: Api) -> None:
    catalog = api.ctx.catalog
    publish_image(catalog, "compute")
    publish_image(catalog, "compute")
    await api.client.post("/api/v1/nodes", headers=api.operator, json={
        "mac": "52:54:00:00:00:01", "name": "n1", "image": "compute:1"})
    await api.client.post("/api/v1/nodes", headers=api.operator, json={
        "mac": "52:54:00:00:00:02", "name": "n2", "image": "compute"})
    listed = (await api.client.get("/api/v1/images", headers=api.viewer)).json()
    assert [(i["name"], i["current"]) for i in listed] == [("compute", "2")]
    versions = {v["version"]: v for v in listed[0]["versions"]}
    assert versions["1"]["nodes"] == 1 and versions["2"]["nodes"] == 1
    assert versions["2"]["kernel_release"] == "6.1.0-test"
    assert versions["2"]["files"]["vmlinuz"]["size"] == 700
    moved = await api.client.put("/api/v1/images/compute/current", headers=api.admin,
                                 json={"version": "1"})
    assert moved.status_code == 200 and moved.json()["current"] == "1"
    assert (await api.ctx.audit.entries())[0].target == "compute:1"
    missing = await api.client.put("/api/v1/images/compute/current", headers=api.admin,
                                   json={"version": "9"})
    assert missing.status_code == 404 and "image list" in missing.json()["message"]
    unknown = await api.client.get("/api/v1/images/nothing", headers=api.viewer)
    assert unknown.status_code == 404


async def test_leases_are_listed_by_address(api: Api) -> None:
    for last in (20, 3):
        lease = Lease(ipaddress.IPv4Address(f"10.0.0.{last}"),
                      MacAddress(f"52:54:00:00:00:{last:02x}"), 2e9, hostname=f"h{last}")
        await api.ctx.inventory.put_lease(lease, expect=0)
    leases = (await api.client.get("/api/v1/leases", headers=api.viewer)).json()
    assert [lease["ip"] for lease in leases] == ["10.0.0.3", "10.0.0.20"]


async def test_settings_view_redacts_secrets(tmp_path: Path) -> None:
    inventory = Inventory(MemoryStore())
    await inventory.start()
    settings = api_settings(tmp_path, PROVISIONER_API_AUTH="false")
    settings = type(settings)(**{**settings.__dict__,
                                 "defaults": {"power_password": "hunter2", "console": "ttyS0"}})
    app = create_app(ApiContext.build(settings, inventory))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        response = await client.get("/api/v1/settings")
    await inventory.stop()
    assert response.status_code == 200 and "hunter2" not in response.text
    body = response.json()
    assert body["defaults"] == {"console": "ttyS0", "power_password": "********"}
    assert body["api"]["max_body"] == 65536 and body["api"]["boot_token_ttl"] == 3600
    assert body["data_dir"] == str(tmp_path)


async def test_counters_and_audit(api: Api) -> None:
    api.ctx.counters = lambda: {"tftp": {"sent": 3}}
    assert (await api.client.get("/api/v1/counters", headers=api.viewer)).json() == {
        "tftp": {"sent": 3}}
    await api.client.post("/api/v1/groups", headers=api.admin, json={"name": "a"})
    await api.client.post("/api/v1/groups", headers=api.admin, json={"name": "b"})
    page = (await api.client.get("/api/v1/audit", headers=api.admin,
                                 params={"limit": 1})).json()
    assert [(e["action"], e["target"]) for e in page["items"]] == [("group.create", "b")]
    older = (await api.client.get("/api/v1/audit", headers=api.admin,
                                  params={"cursor": page["next_cursor"],
                                          "action": "group.create"})).json()
    assert [e["target"] for e in older["items"]] == ["a"] and older["next_cursor"] is None
    assert older["items"][0]["who"].startswith("token:admin-token(")
