"""Which settings the CLI uses (cli/target.py's rule), `provisioner status`, reads that create
no store, one-line HTTP errors that name the URL, and the node's current address and version."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli.target import resolve
from provisioner.config import load_settings
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import BootEvent, Lease, MacAddress
from provisioner.store import open_store
from tests.support.cli import Cli

MAC = "52:54:00:00:00:01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    # Ports nothing listens on, so that "not answering" is what this test made.
    return Cli(tmp_path, env={"PROVISIONER_API_PORT": str(free_port()),
                              "PROVISIONER_SCHEDULER_PORT": str(free_port())})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_option_then_environment_then_defaults(tmp_path: Path) -> None:
    one = write(tmp_path / "one.toml", f'data_dir = "{tmp_path / "one"}"\n')
    two = write(tmp_path / "two.toml", f'data_dir = "{tmp_path / "two"}"\n')
    env = {"PROVISIONER_CONFIG": str(two), "HOME": str(tmp_path)}
    chosen = resolve(one, env)
    assert chosen.settings.data_dir == tmp_path / "one" and chosen.reason == "--config"
    chosen = resolve(None, env)
    assert chosen.settings.data_dir == tmp_path / "two"
    assert chosen.reason == "$PROVISIONER_CONFIG" and chosen.namespace is None
    chosen = resolve(None, {"PROVISIONER_DATA_DIR": str(tmp_path / "d")})
    assert chosen.settings.data_dir == tmp_path / "d"
    assert chosen.lab_root == tmp_path / "d" / "lab" and chosen.namespace is None


def test_a_lab_whose_namespace_is_gone_is_not_used(tmp_path: Path) -> None:
    """A state file left behind (the namespace was removed by hand) must not send the CLI
    to a lab that is not there."""
    lab = tmp_path / "d" / "lab"
    write(lab / "lab.toml", f'data_dir = "{lab / "appliance"}"\n')
    write(lab / "state.json", json.dumps({
        "root": str(lab), "namespace": "pv-gone-000000", "bridge": "br0",
        "address": "10.99.0.1/24", "config": str(lab / "lab.toml"), "store": "sqlite"}))
    chosen = resolve(None, {"PROVISIONER_DATA_DIR": str(tmp_path / "d")})
    assert chosen.namespace is None and chosen.settings.data_dir == tmp_path / "d"


def test_status_says_what_the_cli_uses_and_that_nothing_answers(cli: Cli) -> None:
    shown = cli.json("status")
    assert isinstance(shown, dict)
    assert shown["config"] == "built-in defaults" and shown["lab_namespace"] is None
    assert shown["chosen_by"].startswith("no -c, no $PROVISIONER_CONFIG")
    assert shown["data_dir"] == str(cli.data)
    assert shown["store"]["endpoint"] == str(cli.data / "store.db")
    assert shown["store"]["answers"] is False
    assert shown["store"]["verdict"] == "not created yet"
    assert shown["api"]["url"] == f"http://127.0.0.1:{cli.env['PROVISIONER_API_PORT']}"
    assert shown["api"]["answers"] is False and shown["scheduler"]["answers"] is False
    text = cli("status")
    assert f"api:       {shown['api']['url']}: NOT ANSWERING" in text
    assert "chosen by: no -c, no $PROVISIONER_CONFIG, no lab up under" in text
    assert "store:     sqlite" in text and "not created yet" in text
    cli("node", "add", MAC, "--name", "node001")
    store = cli.json("status")
    assert isinstance(store, dict) and store["store"]["answers"] is True


@pytest.mark.parametrize("args", [["node", "list"], ["node", "show", "n1"], ["group", "list"],
                                  ["node", "events", "n1"], ["token", "list"]])
def test_a_read_creates_no_store_and_says_which_settings_it_used(cli: Cli,
                                                                 args: list[str]) -> None:
    line = cli(*args, code=3)
    assert f"no store at {cli.data / 'store.db'}" in line and "provisioner status" in line
    assert not (cli.data / "store.db").exists()
    assert "not created yet" in cli("store", "status")
    assert not (cli.data / "store.db").exists()


def test_a_scheduler_that_does_not_answer_is_named(cli: Cli) -> None:
    url = f"http://127.0.0.1:{cli.env['PROVISIONER_SCHEDULER_PORT']}"
    line = cli("scheduler", "jobs", code=1)
    assert f"scheduler at {url} is not answering" in line
    assert "provisioner scheduler serve" in line and "provisioner status" in line


@pytest.fixture
def not_a_scheduler() -> Iterator[str]:
    """Something else on the scheduler's port: a plain HTTP server that answers 404."""
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_http_error_without_a_message_names_the_request(tmp_path: Path,
                                                           not_a_scheduler: str) -> None:
    cli = Cli(tmp_path, env={"PROVISIONER_SCHEDULER_URL": not_a_scheduler})
    line = cli("scheduler", "jobs", code=4)
    assert f"GET {not_a_scheduler}/sched/v1/jobs answered HTTP 404" in line
    assert "is the scheduler there?" in line and "provisioner status" in line


def test_node_list_and_show_give_the_current_address_and_image_version(cli: Cli) -> None:
    cli("node", "add", MAC, "--name", "node001", "--image", "compute")
    cli("node", "add", "52:54:00:00:00:02", "--name", "node002", "--ip", "10.0.0.12")
    cli("group", "add", "gpu", "--set", "image=cuda")
    cli("node", "add", "52:54:00:00:00:03", "--name", "node003", "-g", "gpu")
    now = time.time()

    async def boot() -> None:  # what the appliance writes for a dynamic lease and a boot
        store = open_store(load_settings(None, env=cli.env))
        try:
            inv = Inventory(store)
            mac = MacAddress(MAC)
            ip = ipaddress.IPv4Address("10.0.0.150")
            await inv.put_lease(Lease(ip, mac, now + 600, "node001"), expect=0)
            old = ipaddress.IPv4Address("10.0.0.151")  # an expired lease is not current
            await inv.put_lease(Lease(old, mac, now - 5, "node001"), expect=0)
            await inv.add_event(BootEvent(mac, "booted", now, {"image": "compute",
                                                               "version": "3"}))
        finally:
            await store.close()

    asyncio.run(boot())
    rows = {line.split()[0]: line.split() for line in cli("node", "list").splitlines()[1:]}
    assert rows["node001"][2] == "10.0.0.150" and rows["node001"][4:6] == ["compute", "3"]
    assert rows["node002"][2] == "10.0.0.12" and rows["node002"][4:6] == ["-", "-"]
    assert rows["node003"][2] == "-" and rows["node003"][4] == "cuda"  # the group's image
    assert "image:    cuda (from group:gpu)" in cli("node", "show", "node003")
    shown = cli("node", "show", "node001")
    assert "10.0.0.150 (DHCP lease until" in shown and "version:  3" in shown
    assert "10.0.0.12 (reserved, no active lease)" in cli("node", "show", "node002")
    data = cli.json("node", "show", "node001")
    assert isinstance(data, dict)
    assert data["current_ip"] == "10.0.0.150" and data["current_ip_source"] == "lease"
    assert data["image_version"] == "3" and data["ip"] is None
    assert data["effective_image"] == "compute" and data["image_source"] == "node"
