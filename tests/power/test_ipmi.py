"""The IPMI driver (ipmitool, lanplus) against OpenIPMI's ipmi_sim."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import PowerError
from provisioner.power.base import OneTimeBoot, PowerState, Secret, wait_for_state
from provisioner.power.ipmi import IpmiDriver, split_host_port
from provisioner.power.registry import open_power
from tests.power.servers import IpmiSim

USER, PASSWORD = "admin", "pw-IPMI-7x9"
needs_tools = pytest.mark.skipif(
    shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None,
    reason="needs Debian's openipmi and ipmitool (scripts/setup.sh installs them)")


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[IpmiSim]:
    sim = IpmiSim(tmp_path, USER, PASSWORD)
    yield sim
    sim.stop()


def settings(port: int, password: str = PASSWORD) -> dict[str, str | int | bool]:
    return {"power_driver": "ipmi", "power_address": f"127.0.0.1:{port}", "power_user": USER,
            "power_password": password}


def test_password_never_on_the_command_line() -> None:
    driver = IpmiDriver("bmc1.example:6230", USER, Secret(PASSWORD))
    argv = driver.command("chassis", "power", "status")
    assert argv[:9] == ["ipmitool", "-I", "lanplus", "-H", "bmc1.example", "-p", "6230",
                        "-C", "3"]
    assert "-E" in argv and "-P" not in argv
    assert all(PASSWORD not in arg for arg in argv)
    assert driver.environment()["IPMI_PASSWORD"] == PASSWORD
    assert PASSWORD not in repr(driver) and PASSWORD not in str(vars(driver))


def test_addresses() -> None:
    assert split_host_port("10.0.0.5") == ("10.0.0.5", 623)
    assert split_host_port("bmc:6230") == ("bmc", 6230)
    assert split_host_port("[fd00::5]:700") == ("fd00::5", 700)
    with pytest.raises(PowerError, match="port must be a number"):
        split_host_port("bmc:http")


@needs_tools
async def test_on_cycle_off_soft(bmc: IpmiSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    driver = open_power(settings(bmc.port))
    assert await driver.status() is PowerState.OFF
    await driver.cycle()  # off: a cycle powers it on (IPMI refuses to cycle an off chassis)
    assert await driver.status() is PowerState.ON
    assert bmc.actions() == ["power 1"]
    await driver.cycle()
    await wait_for_state(driver, PowerState.ON, timeout=10)  # ipmi_sim powers on after 1 s
    assert bmc.actions() == ["power 1", "power 0", "power 1"]  # the BMC cut and restored power
    await driver.off()
    assert await driver.status() is PowerState.OFF
    await driver.on()
    await driver.soft_off()
    assert bmc.actions()[-3:] == ["power 0", "power 1", "shutdown 1"]
    assert PASSWORD not in caplog.text


@needs_tools
async def test_wrong_password(bmc: IpmiSim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-pw-123"
    with pytest.raises(PowerError, match="failed") as info:
        await open_power(settings(bmc.port, wrong), timeout=20).status()
    assert wrong not in str(info.value) and PASSWORD not in str(info.value)
    assert "power_address" in str(info.value) or "power_password" in str(info.value)
    assert wrong not in caplog.text
    assert bmc.actions() == []


@needs_tools
async def test_next_boot_from_the_network(bmc: IpmiSim) -> None:
    driver = open_power(settings(bmc.port))
    assert isinstance(driver, OneTimeBoot)
    await driver.boot_pxe_once()
    assert bmc.actions() == ["boot pxe"]
