"""vagrant/Vagrantfile parses and passes the libvirt provider's own checks (`vagrant validate`,
offline: it needs no box and no libvirt daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"


def validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # Not a skip: CI runs `vagrant validate`, and scripts/setup.sh installs it.
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed: run scripts/setup.sh (Debian: vagrant, "
                    "vagrant-libvirt)")
    # Vagrant writes .vagrant/ beside the Vagrantfile: validate a copy, not the repository.
    shutil.copy(VAGRANT_DIR / "Vagrantfile", tmp_path / "Vagrantfile")
    environ = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": "libvirt",
               "VAGRANT_HOME": str(tmp_path / "home"), **env}
    return subprocess.run(["vagrant", "validate"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, env=environ, check=False)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_vagrantfile_validates(tmp_path: Path, firmware: str) -> None:
    result = validate(tmp_path, PROVISIONER_FIRMWARE=firmware, PROVISIONER_NODES="3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrantfile_refuses_bad_settings(tmp_path: Path) -> None:
    result = validate(tmp_path, PROVISIONER_FIRMWARE="coreboot")
    assert result.returncode != 0
    assert "PROVISIONER_FIRMWARE must be bios or uefi" in result.stdout + result.stderr


def test_nodes_are_pxe_only_on_an_isolated_network_without_libvirt_dhcp() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    for needle in ('libvirt.boot "network"', "libvirt.mgmt_attach = false",
                   "libvirt__dhcp_enabled: false", 'libvirt__forward_mode: "none"',
                   "52:54:00:98:00:%02x"):
        assert needle in text
