"""The planes' limits (provisioner/limits.py) are ordinary [boot], [tftp] and [dhcp] settings:
documented defaults, read from the file and the environment, refused when they cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.errors import ConfigError


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), **extra}


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(env=env(tmp_path))
    assert (s.boot.max_connections, s.boot.reserved_connections, s.boot.max_per_source) == \
        (2048, 256, 32)
    assert (s.boot.header_timeout, s.boot.idle_timeout, s.boot.write_timeout) == (10, 30, 30)
    assert (s.tftp.max_transfers, s.tftp.max_per_client) == (512, 16)
    assert (s.dhcp.mac_burst, s.dhcp.mac_rate, s.dhcp.mac_table) == (20, 1.0, 4096)


def test_file_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text("[boot]\nmax_per_source = 8\nheader_timeout = 2.5\n"
                    "[tftp]\nmax_per_client = 4\n[dhcp]\nmac_rate = 0.5\n")
    s = load_settings(file, env=env(tmp_path, PROVISIONER_BOOT_RESERVED_CONNECTIONS="100",
                                    PROVISIONER_DHCP_MAC_BURST="5"))
    assert (s.boot.max_per_source, s.boot.header_timeout, s.boot.reserved_connections) == \
        (8, 2.5, 100)
    assert (s.tftp.max_per_client, s.dhcp.mac_rate, s.dhcp.mac_burst) == (4, 0.5, 5)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("BOOT_RESERVED_CONNECTIONS", "2048", "boot.reserved_connections"),
    ("BOOT_MAX_PER_SOURCE", "0", "boot.max_per_source"),
    ("BOOT_WRITE_TIMEOUT", "0", "write_timeout"),
    ("TFTP_MAX_PER_CLIENT", "0", "tftp.max_per_client"),
    ("DHCP_MAC_RATE", "0", "dhcp.mac_rate"),
])
def test_limits_that_cannot_work_are_refused(tmp_path: Path, variable: str, value: str,
                                             says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(env=env(tmp_path, **{f"PROVISIONER_{variable}": value}))
