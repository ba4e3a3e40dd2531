"""The append-only lists page with a cursor: a node's events (oldest first) and the audit log
(newest first), on every store backend; a cursor the API did not give out is a 400 that says
what to do."""

from __future__ import annotations

from typing import Any

from provisioner.inventory.events import EventLog
from provisioner.nodes.model import BootEvent, MacAddress, Node
from provisioner.security.audit import AuditLog
from provisioner.store.base import TxnOp
from tests.api.conftest import Api

MAC = MacAddress("52:54:00:00:0a:01")


async def _pages(api: Api, path: str, limit: int) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get(path, params=params, headers=api.admin)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages


async def _txn(api: Api, ops: list[TxnOp]) -> None:
    for at in range(0, len(ops), 100):
        await api.ctx.inventory.store.txn(ops[at:at + 100])


async def test_events_page_oldest_first_and_every_event_once(store_api: Api) -> None:
    api = store_api
    await api.ctx.inventory.add_node(Node(MAC, "node100"))
    await _txn(api, [EventLog.event_op(BootEvent(MAC, "served", 1_800_000_000.0 + i, {"i": i}))
                     for i in range(250)])
    pages = await _pages(api, "/api/v1/nodes/node100/events", 100)
    assert [len(p["events"]) for p in pages] == [100, 100, 50]
    assert [e["detail"]["i"] for p in pages for e in p["events"]] == list(range(250))
    whole = (await api.client.get("/api/v1/nodes/node100/events", headers=api.viewer)).json()
    assert len(whole["events"]) == 200 and whole["next_cursor"]  # the default page
    exact = (await api.client.get("/api/v1/nodes/node100/events", headers=api.viewer,
                                  params={"limit": 50, "cursor": pages[1]["next_cursor"]}))
    assert exact.json()["next_cursor"] is None  # the last 50 in a page of 50: the end


async def test_audit_pages_newest_first(store_api: Api) -> None:
    api = store_api
    await _txn(api, [AuditLog.op("local:ci", "node.update", f"n{i}", "ok", 1_800_000_000.0 + i)
                     for i in range(130)])
    pages = await _pages(api, "/api/v1/audit", 50)
    targets = [e["target"] for p in pages for e in p["items"]]
    assert targets == [f"n{i}" for i in range(129, -1, -1)]
    assert [len(p["items"]) for p in pages] == [50, 50, 30]


async def test_a_cursor_the_api_did_not_give_is_a_400(api: Api) -> None:
    await api.ctx.inventory.add_node(Node(MAC, "node100"))
    for path in ("/api/v1/audit", "/api/v1/nodes/node100/events"):
        for cursor in ("abc", "../../nodes/x", "1" * 19):
            response = await api.client.get(path, params={"cursor": cursor},
                                            headers=api.admin)
            assert response.status_code == 400, (path, cursor, response.text)
            body = response.json()
            assert body["error"] == "bad_request"
            assert "without ?cursor=" in body["message"]
