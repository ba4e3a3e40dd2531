"""`node power` and `node reimage` through the CLI over a real sqlite store: a real QEMU and a
real ipmi_sim behind the drivers, one-line errors and exit codes, no password in any output."""

from __future__ import annotations

import json
import lzma
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli.main import app
from provisioner.images.format.catalog import ImageCatalog
from tests.power.servers import IpmiSim
from tests.power.test_qemu import Qemu, wait_banners

PASSWORD = "cli-Secret-pw-1"


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.env = {"PROVISIONER_DATA_DIR": str(self.data), "PROVISIONER_CONFIG": "",
                    "PROVISIONER_HANDOFF_KIND": "none"}
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, (args, result.output, result.stderr)
        assert PASSWORD not in result.output + result.stderr
        return result.stdout, result.stderr


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Qemu]:
    vm = Qemu(tmp_path, "-no-reboot")
    yield vm
    vm.stop()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_power_a_qemu_node(cli: Cli, qemu: Qemu) -> None:
    cli("group", "add", "lab", "--set", "power_driver=qemu")
    cli("node", "add", "52:54:00:00:10:01", "--name", "vm1", "-g", "lab",
        "--set", f"power_address={qemu.socket}")
    assert cli("node", "power", "vm1", "status")[0] == "vm1: on\n"
    asyncio_wait(qemu, 1)
    out, _ = cli("node", "power", "vm1", "cycle", "--json")
    assert json.loads(out) == {"node": "vm1", "driver": "qemu", "action": "cycle", "power": "on"}
    events = json.loads(cli("node", "events", "vm1", "--json")[0])
    assert [e["kind"] for e in events] == ["power_cycled"]  # its boot is watched (retries.py)
    asyncio_wait(qemu, 2)
    assert "power is now off" in cli("node", "power", "vm1", "off")[0]
    cli("node", "power", "vm1", "bogus", code=2)


def asyncio_wait(vm: Qemu, count: int) -> None:
    import asyncio

    asyncio.run(wait_banners(vm, count))


@pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="needs openipmi")
def test_power_an_ipmi_node_without_leaking_the_password(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "bmc").mkdir()
    bmc = IpmiSim(tmp_path / "bmc", "admin", PASSWORD)
    try:
        cli("node", "add", "52:54:00:00:10:02", "--name", "bm1", "--set", "power_driver=ipmi",
            "--set", f"power_address=127.0.0.1:{bmc.port}", "--set", "power_user=admin",
            "--set", f"power_password={PASSWORD}")
        assert cli("node", "power", "bm1", "on", "--wait", "5")[0].endswith("power is now on\n")
        assert bmc.actions() == ["power 1"]
        cli("node", "set", "bm1", "--set", "power_password=wrong-one")
        _, err = cli("node", "power", "bm1", "status", code=1)
        assert err.startswith("error: ipmitool chassis power status on 127.0.0.1:")
        assert "wrong-one" not in err
        shown, _ = cli("node", "show", "bm1", "--effective")
        assert "wrong-one" not in shown and "********" in shown
    finally:
        bmc.stop()


def test_manual_driver_prints_the_instruction(cli: Cli) -> None:
    cli("node", "add", "52:54:00:00:10:03", "--name", "old1", "--set", "power_driver=manual",
        "--set", "power_address=rack 4 slot 7")
    out, err = cli("node", "power", "old1", "cycle")
    assert err == "manual power: power-cycle (reset) node old1 (at rack 4 slot 7) now\n"
    assert out == "old1: cycle sent (manual); power is now unknown\n"


def test_errors_are_one_line(cli: Cli) -> None:
    cli("node", "add", "52:54:00:00:10:04", "--name", "n4")
    _, err = cli("node", "power", "n4", "status", code=1)
    assert err.startswith("error: node n4 has no power_driver setting")
    _, err = cli("node", "reimage", "--status", code=4)
    assert "no reimage has run yet" in err
    _, err = cli("node", "reimage", "n4", code=2)
    assert "--image" in err
    _, err = cli("node", "reimage", "n4", "--image", "nosuch", code=4)
    assert err.startswith("error: ")


def test_reimage_through_the_cli_and_its_status(cli: Cli, tmp_path: Path) -> None:
    """Wiring only (a node that never calls back): the boot is the lab's e2e test."""
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.xz"
    kernel.write_bytes(b"not a kernel")
    initrd.write_bytes(lzma.compress(b"x", check=lzma.CHECK_CRC32))
    ImageCatalog(cli.data / "bootimages").import_pair("compute", kernel, initrd)
    cli("node", "add", "52:54:00:00:10:05", "--name", "n5")
    cli("node", "set", "n5", "--set", "power_driver=manual")
    for step in ("provisioning", "booted", "ready"):  # the lifecycle's way to ready
        cli("node", "set", "n5", "--state", step)
    out, err = cli("node", "reimage", "n5", "--image", "compute", "--timeout", "1", code=1)
    steps = [line.split()[2] for line in out.splitlines()]
    assert steps == ["started", "wave", "draining", "waiting_idle", "power_cycle",
                     "waiting_callback", "failed", "stopped"]
    assert "manual power: power-cycle (reset) node n5 now" in err
    status, _ = cli("node", "reimage", "--status")
    assert "stopped" in status and "no callback within 1 s" in status
    saved = json.loads(cli("node", "reimage", "--status", "--json")[0])
    assert saved["version"] == "1" and saved["nodes"]["n5"]["step"] == "failed"
    node = json.loads(cli("node", "show", "n5", "--json")[0])
    assert (node["state"], node["image"]) == ("failed", "compute")
