"""contrib/systemd: the shipped units pass `systemd-analyze verify` and confine the services
as the security model says (a fixed unprivileged user, two capabilities for the appliance and
none for the scheduler, a read-only system)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
NAMES = ("provisioner.service", "provisioner-scheduler.service")


def _directives(unit: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in unit.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: install systemd (scripts/setup.sh)")
    return subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True,
                          check=False, timeout=60)


def _installed_copy(tmp_path: Path, name: str, extra: str = "") -> Path:
    """The unit with ExecStart pointing at this checkout's entry point (verify checks it)."""
    entry = Path(sys.executable).with_name("provisioner")
    text = (UNITS / name).read_text().replace("/usr/local/bin/provisioner", str(entry))
    copy = tmp_path / name
    copy.write_text(text.replace("[Service]\n", f"[Service]\n{extra}"))
    return copy


def test_the_units_verify(tmp_path: Path) -> None:
    done = _verify([_installed_copy(tmp_path, name) for name in NAMES])
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_verifier_catches_a_broken_unit(tmp_path: Path) -> None:
    done = _verify([_installed_copy(tmp_path, NAMES[0], "NoNewPrivileged=yes\n")])
    assert "Unknown key" in done.stderr or "unknown" in done.stderr.lower(), done.stderr


@pytest.mark.parametrize(("name", "capabilities"), [
    ("provisioner.service", "CAP_NET_BIND_SERVICE CAP_NET_RAW"),
    ("provisioner-scheduler.service", ""),
])
def test_the_units_confine_the_services(name: str, capabilities: str) -> None:
    unit = _directives(UNITS / name)
    assert unit["User"] == "provisioner" and unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict" and unit["UMask"] == "0077"
    assert unit["AmbientCapabilities"] == capabilities
    assert unit["CapabilityBoundingSet"] == capabilities
