"""power_password as a reference, "file:PATH" or "env:NAME": read when the driver opens (not
when the setting is stored), checked like an ssh key (owner-only file), and refused with a
message that says what to fix. The resolved password reaches a real BMC (OpenIPMI's ipmi_sim)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import PowerError, ValidationError
from provisioner.nodes.model import MacAddress, Node, check_setting
from provisioner.power.base import PowerState, PowerTarget
from provisioner.power.registry import open_power
from tests.power.servers import IpmiSim

USER, PASSWORD = "admin", "pw-ref-9Zq"
needs_tools = pytest.mark.skipif(
    shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None,
    reason="needs Debian's openipmi and ipmitool (scripts/setup.sh installs them)")


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[IpmiSim]:
    (tmp_path / "bmc").mkdir()
    sim = IpmiSim(tmp_path / "bmc", USER, PASSWORD)
    yield sim
    sim.stop()


@pytest.fixture
def pass_file(tmp_path: Path) -> Path:
    path = tmp_path / "bmc.pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def ipmi(port: int, password: str) -> dict[str, str | int | bool]:
    return {"power_driver": "ipmi", "power_address": f"127.0.0.1:{port}", "power_user": USER,
            "power_password": check_setting("power_password", password)}


@needs_tools
async def test_a_file_reference_is_read_when_the_driver_opens(bmc: IpmiSim,
                                                               pass_file: Path) -> None:
    driver = open_power(ipmi(bmc.port, f"file:{pass_file}"), node="bm1")
    assert await driver.status() is PowerState.OFF  # the BMC accepted the file's password
    assert PASSWORD not in repr(driver) and PASSWORD not in str(vars(driver))


@needs_tools
async def test_an_environment_reference_is_read_when_the_driver_opens(
    bmc: IpmiSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BMC_TEST_PASSWORD", PASSWORD)
    driver = open_power(ipmi(bmc.port, "env:BMC_TEST_PASSWORD"), node="bm1")
    assert await driver.status() is PowerState.OFF


def test_a_reference_is_stored_as_is_and_resolved_only_on_open(tmp_path: Path) -> None:
    missing = tmp_path / "later.pass"
    node = Node(MacAddress("52:54:00:00:20:01"), "bm2",
                settings={"power_password": f"file:{missing}"})  # no file yet: fine
    assert node.settings["power_password"] == f"file:{missing}"
    with pytest.raises(PowerError) as refused:
        PowerTarget.read(node.settings, node="bm2")
    assert str(refused.value) == (f"node bm2: power_password file {missing} does not exist; "
                                  "create it (mode 600) or fix the setting")
    missing.write_text(PASSWORD)
    missing.chmod(0o400)
    assert PowerTarget.read(node.settings, node="bm2").password.reveal() == PASSWORD


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused_like_an_ssh_key(pass_file: Path, mode: int) -> None:
    pass_file.chmod(mode)
    with pytest.raises(PowerError) as refused:
        open_power(ipmi(623, f"file:{pass_file}"), node="bm3")
    message = str(refused.value)
    assert message.startswith(f"node bm3: power_password file {pass_file} is accessible by "
                              f"group or others (mode {mode:03o}); run `chmod 600 {pass_file}`")
    assert PASSWORD not in message


def test_an_empty_file_a_directory_and_a_missing_variable_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.pass"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(PowerError, match="is empty; put the password in it"):
        open_power(ipmi(623, f"file:{empty}"), node="n")
    with pytest.raises(PowerError, match="is not a regular file"):
        open_power(ipmi(623, f"file:{tmp_path}"), node="n")
    monkeypatch.delenv("BMC_NOT_SET", raising=False)
    with pytest.raises(PowerError, match="environment variable BMC_NOT_SET, which is not set"):
        open_power(ipmi(623, "env:BMC_NOT_SET"), node="n")
    monkeypatch.setenv("BMC_NOT_SET", "")
    with pytest.raises(PowerError, match="BMC_NOT_SET, which is empty here"):
        open_power(ipmi(623, "env:BMC_NOT_SET"), node="n")


def test_malformed_references_are_refused_when_set() -> None:
    cases = {"file:relative/bmc.pass": "a file reference needs an absolute path",
             "env:": "an environment reference needs a variable name",
             "env:BMC-PASS": "an environment reference needs a variable name",
             "env:PROVISIONER_STORE_PASSWORD": "PROVISIONER_\\* variables are the appliance's"}
    for value, message in cases.items():
        with pytest.raises(ValidationError, match=message):
            check_setting("power_password", value)


def test_a_refused_secret_value_is_not_shown() -> None:
    with pytest.raises(ValidationError) as refused:
        check_setting("power_password", 48151623)
    assert "48151623" not in str(refused.value)
    assert str(refused.value) == ("settings.power_password: must be a string, not int (the "
                                  "value is a secret and is not shown)")
