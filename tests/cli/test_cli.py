"""The CLI end to end over a real sqlite store: tables, --json, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_node_lifecycle_with_tables_and_json(cli: Cli) -> None:
    cli("group", "add", "compute", "--set", "kernel_args=quiet", "--set", "power_password=pw")
    cli("node", "add", "52-54-00-00-00-01", "--name", "node001", "--ip", "10.0.0.11", "-g",
        "compute", "--set", "console=ttyS0")
    cli("node", "add", "5254.0000.0002", "--name", "node002")
    assert "no node named 'ghost'" in cli("node", "show", "ghost", code=4)
    table = cli("node", "list").splitlines()
    assert table[0].split() == ["NAME", "MAC", "IP", "STATE", "IMAGE", "VERSION", "GROUPS",
                                "FIRMWARE"]
    assert table[1].split()[:3] == ["node001", "52:54:00:00:00:01", "10.0.0.11"]
    nodes = cli.json("node", "list")
    assert isinstance(nodes, list) and [n["name"] for n in nodes] == ["node001", "node002"]
    shown = cli.json("node", "show", "node001", "--effective")
    assert isinstance(shown, dict)
    assert shown["effective"] == {
        "console": {"value": "ttyS0", "source": "node"},
        "kernel_args": {"value": "quiet", "source": "group:compute"},
        "power_password": {"value": "********", "source": "group:compute"},
    }
    assert "pw" not in cli("group", "show", "compute")
    cli("node", "set", "node002", "--name", "node003", "--add-group", "compute", "--image", "base")
    assert cli.json("node", "list", "--group", "compute", "--image", "base") != []
    cli("node", "delete", "node001", "node003")
    assert cli.json("node", "list") == []
    cli("group", "delete", "compute")


def test_status_reports_the_embedded_store(cli: Cli) -> None:
    status = cli.json("store", "status")
    assert isinstance(status, dict)
    assert status["backend"] == "sqlite" and status["endpoint"].endswith("store.db")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["node", "add", "zz", "--name", "n1"], 2, "mac: 'zz' is not a MAC address"),
        (["node", "add", "52:54:00:00:00:09", "--name", "-x"], 2, "RFC 1123"),
        (["node", "add", "52:54:00:00:00:09", "--name", "n9", "--ip", "1.2.3"], 2, "ip: "),
        (["node", "add", "52:54:00:00:00:09", "--name", "n9", "-g", "nogroup"], 4,
         "no group 'nogroup'"),
        (["node", "show", "ghost"], 3, "nothing was ever added with these settings"),
        (["node", "set", "ghost", "--image", "x"], 4, "no node"),
        (["node", "list", "--state", "asleep"], 2, "state: 'asleep' is not one of"),
        (["node", "add", "52:54:00:00:00:09", "--name", "n9", "--set", "colour=red"], 2,
         "settings.colour: unknown setting"),
        (["node", "add", "52:54:00:00:00:09", "--name", "n9", "--set", "novalue"], 2,
         "is not KEY=VALUE"),
        (["group", "delete", "ghost"], 4, "no group"),
        (["--config", "/nonexistent.toml", "node", "list"], 2, "does not exist"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(cli: Cli, args: list[str], code: int,
                                               message: str) -> None:
    assert message in cli(*args, code=code)


def test_duplicate_name_is_a_conflict(cli: Cli) -> None:
    cli("node", "add", "52:54:00:00:00:01", "--name", "node001")
    line = cli("node", "add", "52:54:00:00:00:02", "--name", "node001", code=5)
    assert "belongs to node 52:54:00:00:00:01" in line


def test_python_dash_m_gives_no_traceback_on_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nbackend = 'floppy'\n")
    result = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(bad), "node",
                             "list"], capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PROVISIONER_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: store.backend: 'floppy' is not one of sqlite, memory, etcd")
    assert "Traceback" not in result.stderr
