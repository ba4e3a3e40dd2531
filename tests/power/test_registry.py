"""power.registry: every driver in DRIVERS opens from a node's effective settings, a missing or
unknown power_driver is refused naming the known ones, and base.py stays below the drivers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provisioner.errors import PowerError
from provisioner.nodes.model import SETTINGS, Group, MacAddress, Node, effective_values
from provisioner.power.base import PowerState
from provisioner.power.manual import ManualDriver
from provisioner.power.registry import DRIVERS, open_power

PASSWORD = "pw-registry-5q"
#: an address each driver accepts: the test must learn about every new driver
ADDRESS = {"ipmi": "127.0.0.1:6230", "redfish": "https://127.0.0.1:8443",
           "qemu": "/run/provisioner/lab/n1.qmp", "manual": "rack 4, slot 2"}


def node_settings(kind: str) -> dict[str, str | int | bool]:
    """A node whose group names the driver and whose own settings say where its BMC is."""
    group = Group("bmc", {"power_driver": kind, "power_user": "admin"})
    node = Node(MacAddress("52:54:00:00:03:01"), "n1", groups=("bmc",),
                settings={"power_address": ADDRESS[kind], "power_password": PASSWORD})
    return effective_values(node, {"bmc": group}, {"power_tls_verify": "false"})


def test_the_table_names_the_drivers_the_setting_allows() -> None:
    assert set(DRIVERS) == set(SETTINGS["power_driver"].choices) == set(ADDRESS)
    assert all(driver.kind == name for name, driver in DRIVERS.items())


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_every_driver_opens_from_a_nodes_settings(kind: str) -> None:
    driver = open_power(node_settings(kind), node="n1", timeout=3.5)
    assert type(driver) is DRIVERS[kind] and driver.kind == kind
    assert PASSWORD not in repr(driver) and PASSWORD not in str(vars(driver))
    if kind != "manual":
        assert vars(driver)["timeout"] == 3.5


async def test_the_manual_driver_tells_the_operator_where_the_node_is() -> None:
    told: list[str] = []
    driver = open_power(node_settings("manual"), node="n1", notify=told.append)
    assert isinstance(driver, ManualDriver)
    await driver.cycle()
    assert await driver.status() is PowerState.UNKNOWN
    assert told == ["manual power: power-cycle (reset) node n1 (at rack 4, slot 2) now"]


def test_an_unknown_driver_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(PowerError) as refused:
        open_power({"power_driver": "telnet", "power_address": "x"}, node="n1")
    message = str(refused.value)
    assert "node n1: unknown power_driver 'telnet'" in message
    assert f"known drivers: {', '.join(sorted(DRIVERS))}" in message


def test_no_driver_or_no_address_says_what_to_set() -> None:
    with pytest.raises(PowerError, match="no power_driver setting; set one of ipmi, manual"):
        open_power({}, node="n1")
    for kind in sorted(set(DRIVERS) - {"manual"}):
        with pytest.raises(PowerError, match=f"power_driver={kind} but no power_address"):
            open_power({"power_driver": kind}, node="n1")


def test_base_imports_no_driver() -> None:
    """The drivers import base; if base imported a driver back, the package would have a
    cycle. Checked in a fresh interpreter, where nothing else has loaded them."""
    code = ("import sys, provisioner.power.base; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('provisioner.power'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    assert loaded == ["provisioner.power", "provisioner.power.base"]
