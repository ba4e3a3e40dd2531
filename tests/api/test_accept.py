"""POST /api/v1/nodes/{ref}/accept: a discovered node is registered (and boots from its next
script on); admin only; any other state is a 409 that says what the node is."""

from __future__ import annotations

from provisioner.nodes.model import MacAddress, Node, NodeState
from tests.api.conftest import Api

MAC = MacAddress("52:54:00:00:00:21")


async def test_an_admin_accepts_a_discovered_node(api: Api) -> None:
    inventory = api.ctx.inventory
    await inventory.settle(await inventory.add_node(Node(MAC, "node021",
                                                         state=NodeState.DISCOVERED)))
    for headers in (api.viewer, api.operator):
        refused = await api.client.post("/api/v1/nodes/node021/accept", headers=headers)
        assert refused.status_code == 403, refused.text
    assert (await inventory.get_node("node021")).value.state is NodeState.DISCOVERED

    accepted = await api.client.post(f"/api/v1/nodes/{MAC.dashed}/accept", headers=api.admin)
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["name"], accepted.json()["state"]) == ("node021", "registered")
    events = (await api.client.get("/api/v1/nodes/node021/events", headers=api.viewer)).json()
    assert events["events"][-1]["kind"] == "registered"
    assert events["events"][-1]["detail"]["from"] == "discovered"
    assert events["events"][-1]["detail"]["reason"].startswith("accepted by token:admin")

    again = await api.client.post("/api/v1/nodes/node021/accept", headers=api.admin)
    assert again.status_code == 409
    assert again.json()["error"] == "invalid_transition"
    assert "node node021 is registered" in again.json()["message"]
    missing = await api.client.post("/api/v1/nodes/nope/accept", headers=api.admin)
    assert missing.status_code == 404


async def test_a_failed_node_is_not_accepted(api: Api) -> None:
    inventory = api.ctx.inventory
    await inventory.settle(await inventory.add_node(Node(MAC, "node021",
                                                         state=NodeState.FAILED)))
    refused = await api.client.post("/api/v1/nodes/node021/accept", headers=api.admin)
    assert refused.status_code == 409
    assert refused.json()["message"] == ("node node021 is failed: it cannot go to accepted; "
                                         "from failed it can go to: discovered nodes only")
    assert (await inventory.get_node("node021")).value.state is NodeState.FAILED
