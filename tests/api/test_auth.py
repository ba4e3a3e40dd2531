"""Bearer auth on every admin route: no token, a bad token, a revoked token and too low a role
are refused with the uniform error body and recorded in the audit log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.inventory.repository import Inventory
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings

#: (method, path, the lowest role allowed)
ROUTES = [
    ("GET", "/api/v1/nodes", "viewer"), ("GET", "/api/v1/nodes/x", "viewer"),
    ("POST", "/api/v1/nodes", "operator"), ("PATCH", "/api/v1/nodes/x", "operator"),
    ("DELETE", "/api/v1/nodes/x", "operator"), ("GET", "/api/v1/nodes/x/events", "viewer"),
    ("POST", "/api/v1/nodes/x/power", "operator"), ("POST", "/api/v1/reimage", "operator"),
    ("POST", "/api/v1/nodes/x/accept", "admin"),
    ("GET", "/api/v1/reimage/x", "viewer"),
    ("GET", "/api/v1/groups", "viewer"), ("GET", "/api/v1/groups/x", "viewer"),
    ("POST", "/api/v1/groups", "admin"), ("PATCH", "/api/v1/groups/x", "admin"),
    ("DELETE", "/api/v1/groups/x", "admin"), ("GET", "/api/v1/images", "viewer"),
    ("GET", "/api/v1/images/x", "viewer"), ("PUT", "/api/v1/images/x/current", "admin"),
    ("POST", "/api/v1/images/x/prune", "admin"),
    ("GET", "/api/v1/leases", "viewer"), ("GET", "/api/v1/settings", "viewer"),
    ("GET", "/api/v1/counters", "viewer"), ("GET", "/api/v1/audit", "admin"),
    ("GET", "/api/v1/tokens", "admin"), ("POST", "/api/v1/tokens", "admin"),
    ("DELETE", "/api/v1/tokens/x", "admin"),
]
LOWER = {"viewer": [], "operator": ["viewer"], "admin": ["viewer", "operator"]}


def test_the_table_lists_every_admin_route(api: Api) -> None:
    paths = create_app(api.ctx).openapi()["paths"]
    found = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/api/v1")
             for m in ops}
    listed = {(m, p.replace("/x", "/{ref}", 1)) for m, p, _ in ROUTES}
    normalised = {(m, p.replace("{name}", "{ref}").replace("{token_id}", "{ref}")
                   .replace("{rollout_id}", "{ref}"))
                  for m, p in found}
    assert normalised == listed


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
async def test_no_token_and_bad_tokens_get_401(api: Api, method: str, path: str,
                                               role: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"},
                    {"Authorization": f"Bearer {api.bearer['admin'][:-2]}xx"}):
        response = await api.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"] == "unauthorized"
        assert "provisioner token create" in response.json()["message"]
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
async def test_lower_roles_get_403_naming_the_role_needed(api: Api, method: str, path: str,
                                                          role: str) -> None:
    for lower in LOWER[role]:
        response = await api.client.request(method, path, headers=api.auth(lower), json={})
        assert response.status_code == 403, response.text
        body = response.json()
        assert body["error"] == "forbidden" and f"needs the {role} role" in body["message"]
    response = await api.client.request(method, path, headers=api.auth(role), json={})
    assert response.status_code not in (401, 403), response.text


async def test_refusals_are_audited_with_who_and_why(api: Api) -> None:
    await api.client.get("/api/v1/nodes")
    await api.client.post("/api/v1/groups", headers=api.viewer, json={"name": "g"})
    denied = [e for e in await api.ctx.audit.entries() if e.action == "auth"]
    assert [e.detail["reason"] for e in denied] == ["role viewer < admin", "no bearer token"]
    assert denied[0].who.startswith("token:viewer-token(") and denied[0].outcome == "denied"
    assert denied[1].target == "GET /api/v1/nodes"


async def test_a_revoked_token_stops_working(api: Api) -> None:
    assert (await api.client.get("/api/v1/nodes", headers=api.viewer)).status_code == 200
    token_id = api.bearer["viewer"].split(".")[0]
    response = await api.client.delete(f"/api/v1/tokens/{token_id}", headers=api.admin)
    assert response.status_code == 200 and response.json()["role"] == "viewer"
    assert (await api.client.get("/api/v1/nodes", headers=api.viewer)).status_code == 401


async def test_tokens_made_through_the_api_work_and_are_shown_once(api: Api) -> None:
    made = await api.client.post("/api/v1/tokens", headers=api.admin,
                                 json={"role": "operator", "name": "ci"})
    assert made.status_code == 201
    secret = made.json()["token"]
    listed = (await api.client.get("/api/v1/tokens", headers=api.admin)).json()
    assert secret not in str(listed) and {"ci", "admin-token"} <= {t["name"] for t in listed}
    created = await api.client.post("/api/v1/nodes", headers={"Authorization": f"Bearer {secret}"},
                                    json={"mac": "52:54:00:00:00:09", "name": "n9"})
    assert created.status_code == 201
    entry = (await api.ctx.audit.entries(action="node.create"))[0]
    assert entry.who == f"token:ci({secret.split('.')[0]})"


async def test_with_auth_off_every_caller_is_an_admin(tmp_path: Path) -> None:
    inventory = Inventory(MemoryStore())
    await inventory.start()
    settings = api_settings(tmp_path, PROVISIONER_API_AUTH="false")
    app = create_app(ApiContext.build(settings, inventory))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as client:
        assert (await client.get("/api/v1/audit")).status_code == 200
        assert (await client.post("/api/v1/groups", json={"name": "g"})).status_code == 201
    await inventory.stop()


async def test_a_flood_of_bad_tokens_writes_one_entry_not_one_each(api: Api) -> None:
    store = api.ctx.inventory.store
    before = (await store.status()).revision
    for _ in range(300):
        response = await api.client.get("/api/v1/nodes",
                                        headers={"Authorization": "Bearer nope.nope"})
        assert response.status_code == 401
    assert (await store.status()).revision - before == 1
    await api.ctx.refused.close()
    [summary, first] = [e for e in await api.ctx.audit.entries() if e.action == "auth"]
    assert (first.detail.get("refused", 1), summary.detail["refused"]) == (1, 299)
