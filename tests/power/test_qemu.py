"""The QMP driver against a real QEMU (TCG, no disk, no network): SeaBIOS ends every boot with
"No bootable device." on the debug console, so counting that line proves a reset really
happened. (Its banner is printed twice per boot, and a reset in the middle of SeaBIOS's early
init can hang it, so the tests reset only after a boot has finished.)"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import PowerError
from provisioner.power.base import PowerState, power_action, wait_for_state
from provisioner.power.qemu import QemuDriver
from provisioner.power.registry import open_power

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86 (scripts/setup.sh installs it)")
BANNER = b"No bootable device."


class Qemu:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.socket, self.debug = tmp / "qmp.sock", tmp / "debugcon.log"
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-M", "pc", "-m", "64", "-nodefaults", "-display", "none",
             "-boot", "reboot-timeout=-1", "-qmp", f"unix:{self.socket},server=on,wait=off",
             "-chardev", f"file,id=dbg,path={self.debug}",
             "-device", "isa-debugcon,iobase=0x402,chardev=dbg", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def banners(self) -> int:
        return self.debug.read_bytes().count(BANNER) if self.debug.exists() else 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Qemu]:
    vm = Qemu(tmp_path, "-no-reboot")  # as the lab runs its nodes
    yield vm
    vm.stop()


async def wait_banners(vm: Qemu, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while vm.banners() < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert vm.banners() == count, vm.debug.read_bytes()[-500:]


async def test_status_cycle_off_on(qemu: Qemu) -> None:
    driver = open_power({"power_driver": "qemu", "power_address": str(qemu.socket)}, node="n1")
    assert isinstance(driver, QemuDriver)
    assert await driver.status() is PowerState.ON
    await wait_banners(qemu, 1)

    await driver.cycle()  # under -no-reboot: must reset, not end QEMU
    await wait_banners(qemu, 2)
    assert qemu.proc.poll() is None
    assert await driver.run_status() == "running"

    await driver.off()
    assert await driver.run_status() in {"paused", "prelaunch"}  # stopped and reset
    assert await driver.status() is PowerState.OFF
    await asyncio.sleep(0.5)
    assert qemu.banners() == 2  # frozen: the firmware did not run again

    assert await power_action(driver, "on") is PowerState.ON
    await wait_banners(qemu, 3)  # `on` after `off` boots afresh

    assert qemu.proc.poll() is None


async def test_reset_without_set_action_ends_a_no_reboot_qemu(qemu: Qemu) -> None:
    """Why the driver uses set-action: a bare system_reset under -no-reboot ends QEMU."""
    await wait_banners(qemu, 1)
    with contextlib.suppress(PowerError):  # QEMU may be gone before it answers
        async with QemuDriver(str(qemu.socket))._connect() as qmp:
            await qmp.execute("system_reset")
    assert qemu.proc.wait(timeout=10) == 0


async def test_prelaunch_is_off_and_cycle_starts_it(tmp_path: Path) -> None:
    vm = Qemu(tmp_path, "-S")
    try:
        driver = QemuDriver(str(vm.socket))
        assert await driver.run_status() == "prelaunch"
        assert await driver.status() is PowerState.OFF
        await driver.cycle()
        await wait_for_state(driver, PowerState.ON, timeout=5)
        await wait_banners(vm, 1)
    finally:
        vm.stop()


async def test_soft_off_sends_acpi_powerdown(tmp_path: Path) -> None:
    vm = Qemu(tmp_path, "-no-shutdown")
    try:
        driver = QemuDriver(str(vm.socket))
        await driver.soft_off()  # SeaBIOS has no OS to act on it: the event is the proof
        async with driver._connect() as qmp:
            await qmp.execute("query-status")
        assert vm.proc.poll() is None
    finally:
        vm.stop()


async def test_missing_socket_is_a_power_error(tmp_path: Path) -> None:
    driver = QemuDriver(str(tmp_path / "absent.sock"), timeout=1)
    with pytest.raises(PowerError, match=r"absent\.sock.*QEMU process running"):
        await driver.status()
