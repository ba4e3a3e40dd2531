"""Settings: a TOML file plus PROVISIONER_* environment variables, validated once.

Built once at start-up and passed explicitly; nothing reads the environment later. Precedence:
built-in defaults < the TOML file < the environment. The file is `--config PATH`, else
$PROVISIONER_CONFIG, else /etc/provisioner/provisioner.toml when it exists; with none at all the
defaults work on a fresh machine (embedded sqlite store under the data directory).

Every setting is `[section] key` in the file and PROVISIONER_SECTION_KEY in the environment
(`[store] backend` is PROVISIONER_STORE_BACKEND); top-level keys are PROVISIONER_KEY.
Unknown keys in the file are refused: a typo must not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError, ValidationError
from provisioner.model import SettingValue, check_settings

SYSTEM_CONFIG = Path("/etc/provisioner/provisioner.toml")
STORE_BACKENDS = ("sqlite", "memory", "etcd")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "provisioner"


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    #: sqlite file; empty means DATA_DIR/store.db
    path: str = ""
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    namespace: str = ""
    timeout: float = 2.0


@dataclass(frozen=True)
class ApiSettings:
    listen: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class BootSettings:
    """The HTTP boot plane: kernels, images, overlays and iPXE scripts (no auth, no secrets)."""

    listen: str = "0.0.0.0"
    port: int = 80
    #: built images, NAME/VERSION/{vmlinuz,image.cpio.xz,manifest.json}; empty: DATA_DIR/bootimages
    images: str = ""
    max_connections: int = 2048


@dataclass(frozen=True)
class TftpSettings:
    enabled: bool = True
    listen: str = "0.0.0.0"
    port: int = 69
    #: files served by name; empty means DATA_DIR/tftp (the iPXE binaries go here)
    root: str = ""
    max_blksize: int = 1468  # RFC 2348 blksize ceiling; also capped by mtu - 32
    mtu: int = 1500
    max_windowsize: int = 64  # RFC 7440
    timeout: float = 1.0  # first retransmit, doubled up to 8 s
    max_retries: int = 5
    max_transfers: int = 512
    max_per_client: int = 16


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    tftp: TftpSettings = field(default_factory=TftpSettings)
    boot: BootSettings = field(default_factory=BootSettings)
    #: settings every node starts from, before its groups and its own (see model.SETTINGS)
    defaults: Mapping[str, SettingValue] = field(default_factory=dict)
    #: where the settings came from, for `provisioner store status` and logs
    source: str = "built-in defaults"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "store.db"

    @property
    def images_dir(self) -> Path:
        return Path(self.boot.images) if self.boot.images else self.data_dir / "bootimages"

    @property
    def tftp_root(self) -> Path:
        return Path(self.tftp.root) if self.tftp.root else self.data_dir / "tftp"


SECTIONS: dict[str, type] = {"store": StoreSettings, "api": ApiSettings, "tftp": TftpSettings,
                             "boot": BootSettings}


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any) and the environment, validate, and return Settings."""
    env = os.environ if env is None else env
    file = _choose_file(path, env)
    raw = _read_toml(file) if file else {}
    sections = {name: _section(name, kind, raw.pop(name, {}), env)
                for name, kind in SECTIONS.items()}
    defaults = raw.pop("defaults", {})
    data_dir = env.get("PROVISIONER_DATA_DIR") or raw.pop("data_dir", None)
    if raw:
        raise ConfigError(f"{file}: unknown setting(s) {', '.join(sorted(raw))}; "
                          f"known: data_dir, defaults, {', '.join(SECTIONS)}")
    try:
        checked_defaults = check_settings(_table("defaults", defaults))
    except ValidationError as exc:
        raise ConfigError(f"{file or 'defaults'}: defaults.{exc}") from None
    settings = Settings(
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(env),
        defaults=checked_defaults,
        source=str(file) if file else "built-in defaults",
        **sections,
    )
    _check(settings)
    return settings


def _choose_file(path: Path | None, env: Mapping[str, str]) -> Path | None:
    if path is None and env.get("PROVISIONER_CONFIG"):
        path = Path(env["PROVISIONER_CONFIG"])
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; create it or drop --config")
        return path
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _table(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _section(name: str, kind: type, table: object, env: Mapping[str, str]) -> Any:
    values = dict(_table(name, table))
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{name}] unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    for key in known:
        env_value = env.get(f"PROVISIONER_{name.upper()}_{key.upper()}")
        if env_value is not None:
            values[key] = env_value
    hints = typing.get_type_hints(kind)
    return kind(**{key: _convert(f"{name}.{key}", hints[key], v) for key, v in values.items()})


def _convert(where: str, hint: Any, value: object) -> Any:
    """Coerce a TOML value or an environment string to the field's declared type."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        try:
            if hint is bool and isinstance(value, str):
                return value.lower() in {"1", "true", "yes", "on"}
            if isinstance(value, bool) and hint is not bool:
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
    raise ConfigError(f"{where}: unsupported setting type {hint}")


def _check(settings: Settings) -> None:
    store = settings.store
    if store.backend not in STORE_BACKENDS:
        raise ConfigError(f"store.backend: {store.backend!r} is not one of "
                          f"{', '.join(STORE_BACKENDS)}")
    if store.timeout <= 0:
        raise ConfigError("store.timeout: must be more than 0 seconds")
    if store.backend == "etcd" and not store.endpoints:
        raise ConfigError("store.endpoints: the etcd backend needs at least one HOST:PORT")
    ports = (("api.port", settings.api.port), ("tftp.port", settings.tftp.port),
             ("boot.port", settings.boot.port))
    for name, port in ports:
        if not 0 <= port < 65536:
            raise ConfigError(f"{name}: {port} is not a port (0-65535; 0 picks a free one)")
