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
import ipaddress
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.config_ha import HaSettings, check_ha
from provisioner.config_retention import RetentionSettings, check_retention
from provisioner.config_retries import RetrySettings, check_retries
from provisioner.config_store import StoreSettings, check_store
from provisioner.errors import ConfigError, ValidationError
from provisioner.limits import BootLimits, DhcpLimits, TftpLimits, check_limits
from provisioner.nodes.model import SettingValue, check_settings

SYSTEM_CONFIG = Path("/etc/provisioner/provisioner.toml")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "provisioner"


@dataclass(frozen=True)
class ApiSettings:
    """The FastAPI app: the admin plane /api/v1/ and the node plane /node/v1/."""

    listen: str = "127.0.0.1"
    port: int = 8080
    #: bearer tokens with roles on /api/v1/; off is refused unless listen is loopback only
    auth: bool = True
    #: the URL booted nodes use to reach /node/v1/; empty: http://<boot host>:<port>
    public_url: str = ""
    max_body: int = 1 << 20  # bytes; larger request bodies get 413
    boot_token_ttl: int = 3600  # seconds a one-boot token stays valid


@dataclass(frozen=True)
class ImagesSettings:
    """Image builds: templates, the kernel, and how many versions to keep."""

    #: a site template directory searched before the shipped templates/; empty: none
    templates: str = ""
    keep: int = 3  # versions kept per image name; older ones are pruned after a publish
    kernel_package: str = "linux-image-cloud-amd64"
    #: downloads and unpacked kernels; empty means DATA_DIR/cache
    cache: str = ""
    xz_threads: int = 0  # 0: one per core


@dataclass(frozen=True)
class SchedulerSettings:
    """The small scheduler service (`provisioner scheduler serve`)."""

    listen: str = "127.0.0.1"
    port: int = 8090
    #: where the appliance and the CLI find it; empty: http://<listen>:<port>
    url: str = ""
    interval: float = 1.0  # seconds between dispatcher runs when nothing wakes it sooner
    node_timeout: float = 300.0  # a node whose agent polled before but not for this long is down
    walltime_grace: float = 30.0  # seconds past its walltime before a running job times out
    max_body: int = 1 << 20  # bytes; larger request bodies (scripts) get 413
    #: with the sqlite backend, the scheduler's own file; empty: DATA_DIR/scheduler.db. Two
    #: processes committing to one sqlite file wait on each other's write lock (handoff p99
    #: 5.5 s at 200 registrations/s, against 55 ms with two files). etcd is always shared.
    sqlite_path: str = ""
    #: bearer token for every /sched/v1/ route but the node agent's poll and done (register,
    #: drain, jobs); needed to listen beyond loopback and to submit root jobs (as_root). A secret:
    #: prefer PROVISIONER_SCHEDULER_TOKEN to the file.
    token: str = ""
    #: finished jobs kept (the newest), and the oldest kept, in days; older ones are forgotten
    jobs_kept: int = 10_000
    jobs_days: float = 30.0

    @property
    def client_url(self) -> str:
        """`url`, else the listen address (loopback when it listens on every address)."""
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.listen in ("", "0.0.0.0", "::") else self.listen
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class ServiceSettings:
    """How `provisioner serve` runs once its ports are bound."""

    #: started as root, run as this user after binding, keeping only CAP_NET_BIND_SERVICE and
    #: CAP_NET_RAW (security/privileges.py); empty: keep running as the user who started it.
    #: contrib/systemd/provisioner.service runs as this user from the start instead.
    user: str = ""
    #: seconds a SIGTERM leaves TFTP and HTTP transfers under way and the handoff outbox to
    #: finish before the process exits (provisioner/shutdown.py); what is left stays queued.
    stop_timeout: float = 20.0


@dataclass(frozen=True)
class HandoffSettings:
    """How a booted node is handed to the scheduler."""

    kind: str = "builtin"  # builtin (our scheduler at [scheduler] url) | slurm | none
    timeout: float = 5.0  # seconds one scheduler call may take
    first_delay: float = 0.2  # outbox retry: first wait, doubled up to max_delay
    max_delay: float = 30.0
    #: builtin: seconds the boot callback waits for the outbox's first delivery (0: none)
    answer_wait: float = 2.0
    #: slurm: the scontrol binary and slurm.conf (nodes declared there with State=FUTURE)
    scontrol: str = "scontrol"
    slurm_conf: str = ""  # SLURM_CONF for scontrol; empty: scontrol's default
    #: slurm: the cluster's munge.key on this head; when set, each node's overlay carries it
    #: (0400) and slurm_conf for the image's slurmd (boot/slurmfiles.py). Empty: neither.
    munge_key: str = ""
    #: slurm: when set, a registration is refused unless slurm.conf puts the node in it
    partition: str = ""


@dataclass(frozen=True)
class SubnetSettings:
    """One subnet we are authoritative for. A relayed subnet names its relay's giaddr."""

    network: str
    pool_start: str = ""  # default: the 10th address of the network
    pool_end: str = ""  # default: the last address before broadcast
    routers: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    domain: str = ""
    mtu: int = 0
    ntp: tuple[str, ...] = ()
    relay: str = ""  # giaddr of the relay agent serving this subnet; empty: directly attached


@dataclass(frozen=True)
class DhcpSettings(DhcpLimits):
    #: full (authoritative), proxy (ProxyDHCP beside a site server), off. Off by default: a
    #: DHCP server must never start answering on a network by surprise.
    mode: str = "off"
    interface: str = ""  # the provisioning interface; only packets arriving on it are seen
    listen: str = "0.0.0.0"
    port: int = 67
    server_ip: str = ""  # option 54 / siaddr; default: the interface's address
    subnets: tuple[SubnetSettings, ...] = ()
    lease_time: int = 3600
    offer_hold: int = 30  # seconds an offered address is held for the client's REQUEST
    #: a lease with more than this fraction of lease_time left is ACKed again with no store
    #: write (as Kea's cache-threshold); 0: every REQUEST is written
    lease_cache_threshold: float = 0.25
    decline_time: int = 600  # seconds a DECLINEd address is quarantined
    discovery: bool = False  # unknown MACs become `discovered` nodes
    discovery_dry_run: bool = False  # log what discovery would do; do not answer unknown MACs
    name_pattern: str = "node{index:03}"
    circuit_names: tuple[str, ...] = ()  # "CIRCUIT-ID=NAME": names follow switch ports (opt 82)
    #: lab only: discovered nodes boot at once. Off: they wait for `provisioner node accept`.
    auto_accept: bool = False
    #: relays (giaddr) whose option 82 is believed, besides the subnets' `relay` addresses
    trusted_relays: tuple[str, ...] = ()
    discovery_limit: int = 1024  # discovered (not yet accepted) nodes kept at most
    discovery_ttl: int = 86400  # seconds a discovered node not seen again is kept
    bios_file: str = "undionly.kpxe"
    uefi_x64_file: str = "ipxe.efi"
    uefi_arm64_file: str = "ipxe-arm64.efi"
    detect_other_servers: bool = True  # listen on port 68 for other servers' OFFER/ACK


@dataclass(frozen=True)
class BootSettings(BootLimits):
    """The HTTP boot plane: kernels, images, overlays and iPXE scripts (no auth, no secrets);
    its connection limits and deadlines are in limits.py."""

    listen: str = "0.0.0.0"
    port: int = 80
    #: built images, NAME/VERSION/{vmlinuz,image.cpio.xz,manifest.json}; empty: DATA_DIR/bootimages
    images: str = ""


@dataclass(frozen=True)
class TftpSettings(TftpLimits):
    """The TFTP server; its transfer limits are in limits.py."""

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
    #: iPXE binaries copied into the root at start (Debian package ipxe); empty: none
    ipxe_dir: str = "/usr/lib/ipxe"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    tftp: TftpSettings = field(default_factory=TftpSettings)
    boot: BootSettings = field(default_factory=BootSettings)
    dhcp: DhcpSettings = field(default_factory=DhcpSettings)
    images: ImagesSettings = field(default_factory=ImagesSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    handoff: HandoffSettings = field(default_factory=HandoffSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    ha: HaSettings = field(default_factory=HaSettings)
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
    def cache_dir(self) -> Path:
        return Path(self.images.cache) if self.images.cache else self.data_dir / "cache"

    @property
    def tftp_root(self) -> Path:
        return Path(self.tftp.root) if self.tftp.root else self.data_dir / "tftp"


SECTIONS: dict[str, type] = {"store": StoreSettings, "api": ApiSettings, "tftp": TftpSettings,
                             "boot": BootSettings, "dhcp": DhcpSettings,
                             "images": ImagesSettings, "scheduler": SchedulerSettings,
                             "handoff": HandoffSettings, "service": ServiceSettings,
                             "retries": RetrySettings,
                             "retention": RetentionSettings, "ha": HaSettings}


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any) and the environment, validate, and return Settings."""
    env = os.environ if env is None else env
    file = _choose_file(path, env)
    raw = _read_toml(file) if file else {}
    sections = {name: _section(name, kind, raw.pop(name, {}), env)
                for name, kind in SECTIONS.items()}
    defaults = raw.pop("defaults", {})
    file_data_dir = raw.pop("data_dir", None)
    data_dir = env.get("PROVISIONER_DATA_DIR") or file_data_dir
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


def _section(name: str, kind: type, table: object, env: Mapping[str, str] | None) -> Any:
    values = dict(_table(name, table))
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{name}] unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    for key in known:
        env_value = None if env is None else env.get(f"PROVISIONER_{name.upper()}_{key.upper()}")
        if env_value is not None:
            values[key] = env_value
    hints = typing.get_type_hints(kind)
    missing = [f.name for f in dataclasses.fields(kind) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"[{name}] needs {', '.join(missing)}")
    return kind(**{key: _convert(f"{name}.{key}", hints[key], v) for key, v in values.items()})


def _convert(where: str, hint: Any, value: object) -> Any:
    """Coerce a TOML value or an environment string to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple and args and dataclasses.is_dataclass(args[0]):
        return _tables(where, args[0], value)
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


def _tables(where: str, kind: Any, value: object) -> tuple[Any, ...]:
    """A list of tables (`[[dhcp.subnets]]`), or the same as JSON in an environment variable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a JSON list of tables") from None
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of tables")
    return tuple(_section(f"{where}[{i}]", kind, item, None) for i, item in enumerate(value))


def _check(settings: Settings) -> None:
    check_store(settings.store)
    _check_dhcp(settings.dhcp)
    check_limits(settings.boot, settings.tftp, settings.dhcp)
    check_retries(settings.retries)
    check_retention(settings.retention)
    check_ha(settings.ha, settings.store.timeout)
    if settings.scheduler.jobs_kept < 1 or settings.scheduler.jobs_days <= 0:
        raise ConfigError("scheduler.jobs_kept must be 1 or more and scheduler.jobs_days more "
                          "than 0; they bound how many finished jobs are kept")
    ports = (("api.port", settings.api.port), ("tftp.port", settings.tftp.port),
             ("boot.port", settings.boot.port), ("dhcp.port", settings.dhcp.port))
    for name, port in ports:
        if not 0 <= port < 65536:
            raise ConfigError(f"{name}: {port} is not a port (0-65535; 0 picks a free one)")


def _check_dhcp(dhcp: DhcpSettings) -> None:
    if dhcp.mode not in ("full", "proxy", "off"):
        raise ConfigError(f"dhcp.mode: {dhcp.mode!r} is not one of full, proxy, off")
    if not 0 <= dhcp.lease_cache_threshold < 1:
        raise ConfigError("dhcp.lease_cache_threshold: a fraction from 0 (off) to below 1")
    if dhcp.mode == "full" and not dhcp.subnets:
        raise ConfigError("dhcp.subnets: full mode needs at least one [[dhcp.subnets]] "
                          "with a network (e.g. network = \"10.10.0.0/24\")")
    for i, subnet in enumerate(dhcp.subnets):
        try:
            network = ipaddress.IPv4Network(subnet.network)
            for name in ("pool_start", "pool_end"):
                value = getattr(subnet, name)
                if value and ipaddress.IPv4Address(value) not in network:
                    raise ConfigError(f"dhcp.subnets[{i}].{name}: {value} is outside {network}")
            for address in (*subnet.routers, *subnet.dns, *subnet.ntp, subnet.relay or "0.0.0.0"):
                ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ConfigError(f"dhcp.subnets[{i}]: {exc}") from None
    _check_discovery(dhcp)
    for entry in dhcp.circuit_names:
        if "=" not in entry:
            raise ConfigError(f"dhcp.circuit_names: {entry!r} is not CIRCUIT-ID=NAME")
    try:
        dhcp.name_pattern.format(index=1)
    except (KeyError, ValueError, IndexError) as exc:
        raise ConfigError(f"dhcp.name_pattern: {dhcp.name_pattern!r} is not a pattern "
                          f"with {{index}} ({exc})") from None


def _check_discovery(dhcp: DhcpSettings) -> None:
    for address in dhcp.trusted_relays:
        try:
            ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ConfigError(f"dhcp.trusted_relays: {exc}") from None
    if dhcp.discovery_limit < 0 or dhcp.discovery_ttl <= 0:
        raise ConfigError("dhcp.discovery_limit must be 0 or more and dhcp.discovery_ttl more "
                          "than 0 seconds")
