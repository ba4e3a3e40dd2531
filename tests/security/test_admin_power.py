"""Power settings: whoever sets power_address chooses where the appliance sends the BMC
password, so power_* is the admin role's (an operator gets 403 naming the role); and Redfish
over plain http:// is refused, when set and when used, unless power_insecure=true."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.errors import PowerError
from provisioner.power.registry import open_power
from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings, open_api
from tests.support.cli import Cli

MAC = "52:54:00:00:40:01"
EVIL = "https://bmc.attacker.example"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    found, inventory = await open_api(MemoryStore(), api_settings(tmp_path))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


async def test_an_operator_may_not_touch_power_settings(api: Api) -> None:
    made = await api.client.post("/api/v1/nodes", headers=api.admin, json={
        "mac": MAC, "name": "n1", "settings": {"power_driver": "redfish",
                                               "power_address": "https://bmc1",
                                               "power_password": "pw"}})
    assert made.status_code == 201, made.text
    cases = [({"power_driver": "redfish", "power_address": EVIL, "power_password": "pw"},
              "changing power_address needs the admin role and this token is operator"),
             ({"power_driver": "redfish", "power_address": "https://bmc1"},  # removes one
              "changing power_password needs the admin role")]
    for settings, said in cases:
        refused = await api.client.patch("/api/v1/nodes/n1", headers=api.operator,
                                         json={"settings": settings})
        assert refused.status_code == 403, refused.text
        assert said in refused.json()["message"]
    created = await api.client.post("/api/v1/nodes", headers=api.operator, json={
        "mac": "52:54:00:00:40:02", "name": "n2", "settings": {"power_user": "root"}})
    assert created.status_code == 403 and "power_user" in created.json()["message"]
    denied = [e for e in await api.ctx.audit.entries() if e.outcome == "denied"]
    assert [e.action for e in denied][:2] == ["node.create", "node.update"]
    shown = (await api.client.get("/api/v1/nodes/n1", headers=api.viewer)).json()
    assert shown["settings"]["power_address"] == "https://bmc1"


async def test_an_operator_still_changes_everything_else(api: Api) -> None:
    """The positive case: an operator renames a node with power settings and sets its console;
    the power settings ride along unchanged."""
    await api.client.post("/api/v1/nodes", headers=api.admin, json={
        "mac": MAC, "name": "n1", "settings": {"power_driver": "manual"}})
    changed = await api.client.patch("/api/v1/nodes/n1", headers=api.operator, json={
        "name": "n9", "settings": {"power_driver": "manual", "console": "ttyS1,115200"}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"] == {"console": "ttyS1,115200", "power_driver": "manual"}
    moved = await api.client.patch("/api/v1/nodes/n9", headers=api.admin,
                                   json={"settings": {"power_driver": "ipmi"}})
    assert moved.status_code == 200 and moved.json()["settings"] == {"power_driver": "ipmi"}


async def test_redfish_over_http_needs_power_insecure_at_set_time(api: Api) -> None:
    plain = {"power_driver": "redfish", "power_address": "http://10.0.0.9"}
    refused = await api.client.post("/api/v1/nodes", headers=api.admin,
                                    json={"mac": MAC, "name": "n1", "settings": plain})
    assert refused.status_code == 422
    assert "power_insecure=true" in refused.json()["message"]
    group = await api.client.post("/api/v1/groups", headers=api.admin,
                                  json={"name": "lab", "settings": plain})
    assert group.status_code == 422 and "http://" in group.json()["message"]
    # power_insecure may come from the group while the address is the node's own
    made = await api.client.post("/api/v1/groups", headers=api.admin,
                                 json={"name": "lab", "settings": {"power_insecure": True}})
    assert made.status_code == 201, made.text
    node = await api.client.post("/api/v1/nodes", headers=api.admin, json={
        "mac": MAC, "name": "n1", "groups": ["lab"], "settings": plain})
    assert node.status_code == 201, node.text
    https = await api.client.post("/api/v1/nodes", headers=api.admin, json={
        "mac": "52:54:00:00:40:02", "name": "n2",
        "settings": {"power_driver": "redfish", "power_address": "https://10.0.0.9"}})
    assert https.status_code == 201, https.text


def test_redfish_over_http_refused_by_the_cli_and_at_use_time(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    line = cli("node", "add", MAC, "--name", "n1", "--set", "power_driver=redfish",
               "--set", "power_address=http://10.0.0.9", code=2)
    assert "power_insecure=true" in line
    cli("node", "add", MAC, "--name", "n1", "--set", "power_driver=redfish",
        "--set", "power_address=https://10.0.0.9")
    line = cli("node", "set", "n1", "--set", "power_address=http://10.0.0.9", code=2)
    assert "power_insecure=true" in line
    cli("node", "set", "n1", "--set", "power_address=http://10.0.0.9",
        "--set", "power_insecure=true")
    with pytest.raises(PowerError, match="power_insecure=true"):
        open_power({"power_driver": "redfish", "power_address": "http://10.0.0.9",
                    "power_password": "pw"})
    assert open_power({"power_driver": "redfish", "power_address": "http://10.0.0.9",
                       "power_insecure": True}).kind == "redfish"
