"""Settings: defaults on a fresh machine, TOML file, PROVISIONER_* environment, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.errors import ConfigError


def test_defaults_work_with_no_file(tmp_path: Path) -> None:
    settings = load_settings(env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d")})
    assert settings.store.backend == "sqlite"
    assert settings.store_path == tmp_path / "d" / "provisioner" / "store.db"
    assert settings.api.listen == "127.0.0.1"


def test_file_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text('data_dir = "/srv/prov"\n[store]\nbackend = "etcd"\n'
                    'endpoints = ["10.1.1.1:2379", "10.1.1.2:2379"]\ntimeout = 1.5\n'
                    '[api]\nport = 9000\n[defaults]\nkernel_args = "quiet"\n')
    settings = load_settings(file, env={"PROVISIONER_API_PORT": "9100",
                                        "PROVISIONER_STORE_ENDPOINTS": "127.0.0.1:2379, ::1:2379"})
    assert settings.data_dir == Path("/srv/prov")
    assert settings.store.backend == "etcd" and settings.store.timeout == 1.5
    assert settings.store.endpoints == ("127.0.0.1:2379", "::1:2379")
    assert settings.api.port == 9100
    assert settings.defaults == {"kernel_args": "quiet"}
    assert settings.source == str(file)


def test_environment_data_dir_wins_over_the_file(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text('data_dir = "/srv/prov"\n')
    settings = load_settings(file, env={"PROVISIONER_DATA_DIR": str(tmp_path / "env")})
    assert settings.data_dir == tmp_path / "env"


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text('[store]\nbackend = "memory"\n')
    assert load_settings(env={"PROVISIONER_CONFIG": str(file)}).store.backend == "memory"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[store]\nbackend = 'mysql'\n", {}, r"store\.backend: 'mysql' is not one of"),
        ("[store]\nbakend = 'sqlite'\n", {}, r"\[store\] unknown setting\(s\) bakend"),
        ("colour = 1\n", {}, r"unknown setting\(s\) colour"),
        ("[api]\nport = 'http'\n", {}, r"api\.port: expected int"),
        ("", {"PROVISIONER_API_PORT": "70000"}, r"api\.port: 70000 is not a port"),
        ("", {"PROVISIONER_STORE_TIMEOUT": "0"}, r"store\.timeout"),
        ("[defaults]\nnope = 1\n", {}, r"defaults\.settings\.nope: unknown setting"),
        ("[store\n", {}, "not valid TOML"),
        ("[retention]\nevents_per_node = 0\n", {}, r"\[retention\] counts must be 1"),
        ("", {"PROVISIONER_RETENTION_AUDIT_DAYS": "0"}, r"ages \(days\) more than 0"),
        ("[retention]\nbatch = 500\n", {}, r"retention\.batch must be 1 to 128"),
        ("[retention]\ninterval = 0\n", {}, r"retention\.interval"),
        ("[ha]\nleader_ttl = 1\n", {}, r"ha\.leader_ttl must be 2 seconds or more"),
        ("[store]\ntimeout = 5\n[ha]\nleader_ttl = 8\n", {}, r"twice store\.timeout \(5 s\)"),
        ("[ha]\nfallback_urls = ['10.0.0.2']\n", {}, r"ha\.fallback_urls: '10\.0\.0\.2' is not"),
        ("[ha]\nfallback_urls = ['http://10.0.0.2/boot']\n", {}, r"ha\.fallback_urls"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path: Path, text: str, env: dict[str, str],
                                          message: str) -> None:
    file = tmp_path / "p.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(file, env=env)


def test_the_other_heads_apis_are_on_their_boot_hosts(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text("[ha]\nfallback_urls = ['http://10.0.0.2/', 'http://10.0.0.3:8081']\n")
    ha = load_settings(file, env={}).ha
    assert ha.fallback_heads(8080) == [("http://10.0.0.2", "http://10.0.0.2:8080"),
                                       ("http://10.0.0.3:8081", "http://10.0.0.3:8080")]


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", env={})


def test_retention_defaults_and_a_file(tmp_path: Path) -> None:
    defaults = load_settings(env={}).retention
    assert (defaults.events_per_node, defaults.events_days) == (200, 30.0)
    assert (defaults.audit_records, defaults.audit_days) == (100_000, 365.0)
    assert (defaults.compact_interval, defaults.compact_keep) == (600.0, 10_000)
    file = tmp_path / "p.toml"
    file.write_text("[retention]\nevents_per_node = 50\ncompact_interval = 0\n")
    chosen = load_settings(file, env={}).retention
    assert (chosen.events_per_node, chosen.compact_interval) == (50, 0.0)
