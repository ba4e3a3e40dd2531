"""The Redfish driver against sushy-tools' emulator (fake driver: a power change is applied
1-11 s after the BMC accepts it, like real hardware, so states are polled)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from provisioner.errors import PowerError
from provisioner.power.base import OneTimeBoot, PowerState, wait_for_state
from provisioner.power.redfish import RedfishDriver
from provisioner.power.registry import open_power
from tests.power.servers import Sushy

USER, PASSWORD = "admin", "s3cret-Redfish-pw"
SETTLE = 20.0


@pytest.fixture(scope="module")
def sushy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sushy]:
    server = Sushy(tmp_path_factory.mktemp("sushy"), USER, PASSWORD)
    yield server
    server.stop()


def settings(url: str, password: str = PASSWORD, **extra: str | bool
             ) -> dict[str, str | int | bool]:
    """A node's power settings; the emulator speaks plain http, so those need power_insecure."""
    plain: dict[str, str | int | bool] = {"power_insecure": True} \
        if url.startswith("http://") else {}
    return {"power_driver": "redfish", "power_address": url, "power_user": USER,
            "power_password": password, **plain, **extra}


async def test_status_on_cycle_off(sushy: Sushy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    driver = open_power(settings(sushy.url))
    assert isinstance(driver, RedfishDriver)
    assert await driver.status() in {PowerState.OFF, PowerState.ON}
    await driver.on()
    await wait_for_state(driver, PowerState.ON, timeout=SETTLE)
    await driver.cycle()  # ForceRestart: the fake system goes Off, then On again
    assert await driver.status() is PowerState.OFF
    await wait_for_state(driver, PowerState.ON, timeout=SETTLE)
    await driver.off()
    await wait_for_state(driver, PowerState.OFF, timeout=SETTLE)
    await driver.cycle()  # a cycle of a machine that is off powers it on
    await wait_for_state(driver, PowerState.ON, timeout=SETTLE)
    await driver.soft_off()
    await wait_for_state(driver, PowerState.OFF, timeout=SETTLE)
    assert "ComputerSystem.Reset GracefulShutdown" in caplog.text
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(driver) and PASSWORD not in str(vars(driver))


async def test_system_url_as_address(sushy: Sushy) -> None:
    driver = open_power(settings(sushy.url + "/redfish/v1/Systems/"
                                 "27946b59-9e44-4fa7-8e91-f3527a1ef094"))
    assert await driver.status() in {PowerState.OFF, PowerState.ON}


async def test_wrong_password_says_what_to_check(sushy: Sushy,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-Password-42"
    with pytest.raises(PowerError, match="check power_user and power_password") as info:
        await open_power(settings(sushy.url, wrong)).status()
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text


async def test_credentials_in_url_refused() -> None:
    with pytest.raises(PowerError, match="must not hold credentials") as info:
        open_power(settings(f"https://{USER}:{PASSWORD}@127.0.0.1:1"))
    assert PASSWORD not in str(info.value)


async def test_plain_http_needs_power_insecure(sushy: Sushy) -> None:
    """Basic auth over http:// hands the password to anyone on the path: refused when the
    driver opens, before any request, unless power_insecure=true says it is meant."""
    with pytest.raises(PowerError, match="power_insecure=true") as info:
        open_power(settings(sushy.url, power_insecure=False))
    assert PASSWORD not in str(info.value)
    assert await open_power(settings(sushy.url)).status() in {PowerState.OFF, PowerState.ON}


async def test_nothing_listening() -> None:
    with pytest.raises(PowerError, match=r"cannot connect to http://127\.0\.0\.1:9 .*address"):
        await open_power(settings("http://127.0.0.1:9")).status()


async def test_self_signed_needs_explicit_opt_out(tmp_path: Path) -> None:
    server = Sushy(tmp_path, USER, PASSWORD, tls=True)
    try:
        with pytest.raises(PowerError, match="power_tls_verify=false"):
            await open_power(settings(server.url)).status()
        insecure = open_power(settings(server.url, power_tls_verify="false"))
        assert await insecure.status() in {PowerState.OFF, PowerState.ON}
        pinned = open_power(settings(server.url, power_tls_verify=str(tmp_path / "cert.pem")))
        assert await pinned.status() in {PowerState.OFF, PowerState.ON}
    finally:
        server.stop()


async def test_next_boot_from_the_network(sushy: Sushy) -> None:
    driver = open_power(settings(sushy.url))
    assert isinstance(driver, OneTimeBoot)
    await driver.boot_pxe_once()
    auth = (USER, PASSWORD)
    systems = httpx.get(sushy.url + "/redfish/v1/Systems", auth=auth).json()
    system = httpx.get(sushy.url + systems["Members"][0]["@odata.id"], auth=auth).json()
    assert system["Boot"]["BootSourceOverrideTarget"] == "Pxe"
