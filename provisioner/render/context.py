"""BootContext: everything a boot template may see about one node, as plain values.

Re-exported by provisioner.render.environment (the contract names it there); kept apart so
environment.py stays small and this module needs no jinja2. Secrets never enter a context's
variables: settings marked secret in model.SETTINGS and the power_* settings are dropped, and
the one-boot token is carried beside the variables (`token`), only for OverlayBuilder to write
as a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from provisioner.config import SubnetSettings
from provisioner.nodes.model import SETTINGS, Node, SettingValue

DEFAULT_CONSOLE: Final = "ttyS0,115200"
DEFAULT_PARTITION: Final = "compute"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    mac: str
    ip: str | None
    firmware: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageRef:
    name: str
    version: str


@dataclass(frozen=True)
class Urls:
    """Where the node fetches things. Empty strings for image files when no image is set."""

    boot_base: str
    api_base: str
    script: str
    kernel: str
    image: str
    overlay: str
    install: str
    callback: str
    #: the same for each other head ([ha] fallback_urls), tried in order when ours is gone
    fallbacks: tuple[Urls, ...] = ()


@dataclass(frozen=True)
class Network:
    """The node's address. Without an address and prefix the node uses DHCP (mode "dhcp")."""

    ip: str | None = None
    prefix: int | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str = ""
    interface: str = "eth0"
    mtu: int = 0

    @property
    def mode(self) -> str:
        return "static" if self.ip and self.prefix is not None else "dhcp"

    @property
    def netmask(self) -> str | None:
        if self.prefix is None:
            return None
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix}").netmask)

    @classmethod
    def for_ip(cls, ip: ipaddress.IPv4Address | None,
               subnets: Sequence[SubnetSettings]) -> Network:
        """The static network of `ip` from the DHCP subnet holding it; else DHCP mode."""
        if ip is None:
            return cls()
        for subnet in subnets:
            net = ipaddress.IPv4Network(subnet.network, strict=False)
            if ip in net:
                return cls(ip=str(ip), prefix=net.prefixlen,
                           gateway=subnet.routers[0] if subnet.routers else None,
                           dns=tuple(subnet.dns), domain=subnet.domain, mtu=subnet.mtu)
        return cls(ip=str(ip))


@dataclass(frozen=True)
class SchedulerTarget:
    url: str = ""
    partition: str = DEFAULT_PARTITION
    features: tuple[str, ...] = ()


def template_settings(settings: Mapping[str, SettingValue]) -> dict[str, SettingValue]:
    """Effective settings (model.effective_values) a template may see: secrets and power_*
    dropped."""
    return {key: value for key, value in sorted(settings.items()) if not _hidden(key)}


def _hidden(key: str) -> bool:
    spec = SETTINGS.get(key)
    return (spec is not None and spec.secret) or key.startswith("power_")


@dataclass(frozen=True)
class BootContext:
    """What one node's boot templates see. `variables()` is the template namespace."""

    node: NodeInfo
    settings: Mapping[str, SettingValue]
    image: ImageRef | None
    urls: Urls
    kernel_args: str
    console: str
    scheduler: SchedulerTarget
    network: Network
    ssh_keys: tuple[str, ...] = ()
    #: the one-boot token; never a template variable, only written by OverlayBuilder as a file
    token: str | None = field(default=None, repr=False)
    #: extra variables (site data); the names above win over them
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_node(cls, node: Node, settings: Mapping[str, SettingValue], *,
                 boot_base: str, api_base: str, image_name: str | None = None,
                 image_version: str | None = None, network: Network | None = None,
                 scheduler_url: str = "", ssh_keys: Sequence[str] = (),
                 token: str | None = None, extra: Mapping[str, Any] | None = None,
                 fallbacks: Sequence[tuple[str, str]] = ()) -> BootContext:
        """Build the context from a node, its effective settings and where things are served.
        `boot_base`/`api_base` are URLs without a trailing '/' (http://10.0.0.1:80);
        `fallbacks` are the other heads' (boot base, API base)."""
        clean = template_settings(settings)
        image = ImageRef(image_name, image_version or "current") if image_name else None
        features = str(clean.get("scheduler_features", ""))
        return cls(
            node=NodeInfo(node.name, str(node.mac), str(node.ip) if node.ip else None,
                          str(node.firmware), tuple(node.groups)),
            settings=clean,
            image=image,
            urls=dataclasses.replace(
                _urls(str(node.mac), boot_base.rstrip("/"), api_base.rstrip("/"), image),
                fallbacks=tuple(_urls(str(node.mac), boot.rstrip("/"), api.rstrip("/"), image)
                                for boot, api in fallbacks)),
            kernel_args=str(clean.get("kernel_args", "")),
            console=str(clean.get("console", DEFAULT_CONSOLE)),
            scheduler=SchedulerTarget(scheduler_url,
                                str(clean.get("scheduler_partition", DEFAULT_PARTITION)),
                                tuple(f.strip() for f in features.split(",") if f.strip())),
            network=network if network is not None else Network(
                ip=str(node.ip) if node.ip else None),
            ssh_keys=tuple(k.strip() for k in ssh_keys if k.strip()),
            token=token,
            extra=dict(extra or {}),
        )

    def variables(self) -> dict[str, Any]:
        """The template namespace: plain dicts, lists and scalars (never the token)."""
        network = dataclasses.asdict(self.network)
        network.update(mode=self.network.mode, netmask=self.network.netmask,
                       dns=list(self.network.dns))
        core: dict[str, Any] = {
            "node": {**dataclasses.asdict(self.node), "groups": list(self.node.groups)},
            "settings": dict(self.settings),
            "image": dataclasses.asdict(self.image) if self.image else None,
            "urls": dataclasses.asdict(self.urls),
            "kernel_args": self.kernel_args,
            "console": self.console,
            "scheduler": {**dataclasses.asdict(self.scheduler),
                          "features": list(self.scheduler.features)},
            "network": network,
            "ssh_keys": list(self.ssh_keys),
        }
        return {**self.extra, **core}

    def variables_digest(self) -> str:
        """sha256 of the variables, for caches keyed by what a render can depend on."""
        text = json.dumps(self.variables(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _urls(mac: str, boot: str, api: str, image: ImageRef | None) -> Urls:
    files = f"{boot}/boot/images/{image.name}/{image.version}" if image else ""
    return Urls(
        boot_base=boot,
        api_base=api,
        script=f"{boot}/boot/{mac}.ipxe",
        kernel=f"{files}/vmlinuz" if image else "",
        image=f"{files}/image.cpio.xz" if image else "",
        overlay=f"{boot}/boot/nodes/{mac}/overlay.cpio.xz",
        install=f"{boot}/boot/nodes/{mac}/install.ks",
        callback=f"{api}/node/v1/booted",
    )
