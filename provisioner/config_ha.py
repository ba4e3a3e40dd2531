"""The `[ha]` settings: several head nodes on one etcd store.

Each head registers itself under `heads/<name>` in the store, under a store lease of `ttl`
seconds that it renews (ha/membership.py), with the addresses it advertises. Every head follows
that prefix, so all of them know the same live set; DHCP clients are split over it by a hash of
their MAC (ha/buckets.py). A head whose lease cannot be renewed fences itself (ha/fencing.py):
no new DHCP offers, no boot tokens, 503 on /healthz, until its session is back.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from provisioner.errors import ConfigError

#: etcd's shortest lease with its default election timeout is 2 s (1.5 election timeouts)
MIN_TTL = 2.0


@dataclass(frozen=True)
class HaSettings:
    #: this head's name among the heads: unique per head; default: the host name
    name: str = field(default_factory=socket.gethostname)
    #: seconds a head that stops renewing stays in the live set; its DHCP clients move to the
    #: other heads after that (and the watch that tells them)
    ttl: float = 3.0
    #: the addresses shown by `provisioner heads`: the DHCP server identifier (option 54),
    #: the boot plane's and the API's URLs; empty: what this head uses itself
    server_id: str = ""
    boot_url: str = ""
    api_url: str = ""


def check_ha(ha: HaSettings) -> None:
    if not ha.name or "/" in ha.name or not ha.name.isprintable() or len(ha.name) > 64:
        raise ConfigError(f"ha.name: {ha.name!r} is not a head name: 1 to 64 printable "
                          "characters without '/' (default: the host name)")
    if ha.ttl < MIN_TTL:
        raise ConfigError(f"ha.ttl must be {MIN_TTL:g} seconds or more: etcd rounds a shorter "
                          "lease up, and a head would be fenced on every slow renewal")
