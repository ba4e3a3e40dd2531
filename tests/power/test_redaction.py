"""A power password stored as a value is returned by no path of the API or the CLI: node and
group reads (table and JSON, own and effective settings), the settings dump, audit entries,
timeline events, and the error messages of a refused value and of a failed power action."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.nodes.model import REDACTED
from provisioner.store.memory import MemoryStore
from tests.api.conftest import open_api
from tests.power.servers import IpmiSim
from tests.support.cli import Cli

NODE_PW, GROUP_PW, DEFAULT_PW, STORE_PW = "node-pw-Q1x", "group-pw-Q2x", "dflt-pw-Q3x", "st-pw-Q4x"
BMC_PW = "bmc-pw-Q5x"  # what the BMC accepts: the node's is wrong, so power fails
REFUSED = 77123456  # a password of the wrong type: refused without being echoed
SECRETS = (NODE_PW, GROUP_PW, DEFAULT_PW, STORE_PW, BMC_PW, str(REFUSED))
needs_ipmi = pytest.mark.skipif(
    shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None,
    reason="needs Debian's openipmi and ipmitool (scripts/setup.sh installs them)")


def _leaks(texts: list[str]) -> list[str]:
    return [secret for secret in SECRETS if any(secret in text for text in texts)]


@needs_ipmi
async def test_no_api_answer_holds_a_stored_password(tmp_path: Path) -> None:
    (tmp_path / "bmc").mkdir()
    bmc = IpmiSim(tmp_path / "bmc", "admin", BMC_PW)
    config = tmp_path / "provisioner.toml"
    config.write_text(f'[store]\nbackend = "memory"\nuser = "prov"\npassword = "{STORE_PW}"\n'
                      f'[defaults]\npower_password = "{DEFAULT_PW}"\n')
    api, inventory = await open_api(MemoryStore(), load_settings(
        config, env={"PROVISIONER_DATA_DIR": str(tmp_path)}))
    client, texts = api.client, []
    try:
        answers = [
            await client.post("/api/v1/groups", headers=api.admin, json={
                "name": "bmc", "settings": {"power_driver": "ipmi", "power_user": "admin",
                                            "power_password": GROUP_PW}}),
            await client.post("/api/v1/nodes", headers=api.admin, json={
                "mac": "52:54:00:00:30:01", "name": "bm1", "groups": ["bmc"],
                "settings": {"power_address": f"127.0.0.1:{bmc.port}",
                             "power_password": NODE_PW}}),
            await client.post("/api/v1/nodes", headers=api.admin, json={
                "mac": "52:54:00:00:30:02", "name": "bm2",
                "settings": {"power_password": REFUSED}}),
            await client.patch("/api/v1/nodes/bm1", headers=api.admin, json={
                "state": "provisioning",
                "settings": {"power_address": f"127.0.0.1:{bmc.port}",
                             "power_password": NODE_PW}}),
            await client.post("/api/v1/nodes/bm1/power", headers=api.operator,
                              json={"action": "on"}),
        ]
        assert [a.status_code for a in answers] == [201, 201, 422, 200, 502], answers[-1].text
        for path in ("/nodes", "/nodes/bm1", "/nodes/bm1/events", "/groups", "/groups/bmc",
                     "/audit", "/settings"):
            answers.append(await client.get(f"/api/v1{path}", headers=api.admin))
            assert answers[-1].status_code == 200, (path, answers[-1].text)
        texts = [answer.text for answer in answers]
    finally:
        await client.aclose()
        await inventory.stop()
        bmc.stop()
    assert _leaks(texts) == []
    node = answers[6].json()
    assert node["settings"]["power_password"] == REDACTED
    assert answers[9].json()["settings"]["power_password"] == REDACTED
    assert "power_password" in answers[2].text  # the refusal names the setting, not the value
    events = answers[7].json()["events"]
    assert events and {"node.update", "node.create", "power.on"} <= {
        entry["action"] for entry in answers[10].json()["items"]}


def test_no_cli_output_holds_a_stored_password(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    outputs = [
        cli("group", "add", "bmc", "--set", "power_driver=ipmi",
            "--set", f"power_password={GROUP_PW}"),
        cli("node", "add", "52:54:00:00:31:01", "--name", "bm1", "-g", "bmc",
            "--set", f"power_password={NODE_PW}"),
        cli("node", "set", "bm1", "--set", f"power_password={NODE_PW}"),
    ]
    for args in (("node", "show", "bm1"), ("node", "show", "bm1", "--json"),
                 ("node", "show", "bm1", "--effective"),
                 ("node", "show", "bm1", "--effective", "--json"), ("node", "list", "--json"),
                 ("node", "events", "bm1"), ("node", "events", "bm1", "--json"),
                 ("group", "show", "bmc"), ("group", "show", "bmc", "--json"),
                 ("group", "list"), ("group", "list", "--json")):
        outputs.append(cli(*args))
    # A power action that fails: the error line names the BMC, not the password.
    outputs.append(cli("node", "power", "bm1", "status", code=1))
    assert _leaks(outputs) == []
    assert outputs[3].count(REDACTED) == 1 and REDACTED in outputs[10]
