"""The `[ha]` settings: several head nodes on one etcd store.

Each head registers itself under `heads/<name>` in the store, under a store lease of `ttl`
seconds that it renews (ha/membership.py), with the addresses it advertises. Every head follows
that prefix, so all of them know the same live set; DHCP clients are split over it by a hash of
their MAC (ha/buckets.py). A head whose lease cannot be renewed fences itself (ha/fencing.py):
no new DHCP offers, no boot tokens, 503 on /healthz, until its session is back.

With `elect = true` the work that must happen once across the heads (the callback deadline
sweep, the handoff outbox's delivery, the rollouts' resumption, the boot retries, retention and
compaction) runs only on the head that leads the election (ha/election.py, ha/singletons.py);
a head that dies hands it on within `leader_ttl` seconds.

`fallback_urls` are the other heads' boot planes as nodes reach them. A node's iPXE script
tries each for its kernel, image and overlay when the head that answered its DHCP stops
answering mid-boot, and its /init tries each head's API (the same host, `[api] port`) for the
callback. Any head can serve them: the one-boot token and the node's lease are in the store.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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
    #: run the once-only work under an election (turn on when several heads share a store)
    elect: bool = False
    #: seconds a dead leader keeps the lead before another head takes it over
    leader_ttl: float = 10.0
    #: the other heads' boot plane base URLs (http://ADDRESS[:PORT]), tried in order after ours
    fallback_urls: tuple[str, ...] = ()

    def fallback_heads(self, api_port: int) -> list[tuple[str, str]]:
        """(boot base, API base) of each other head: its API on the same host, `api_port`."""
        return [(url.rstrip("/"), f"http://{urlsplit(url).hostname}:{api_port}")
                for url in self.fallback_urls]


def check_ha(ha: HaSettings, store_timeout: float) -> None:
    """`store_timeout`: [store] timeout. The lead outlives a keepalive that times out on one
    etcd member and is made again on the next, or a member's loss would move the lead."""
    if not ha.name or "/" in ha.name or not ha.name.isprintable() or len(ha.name) > 64:
        raise ConfigError(f"ha.name: {ha.name!r} is not a head name: 1 to 64 printable "
                          "characters without '/' (default: the host name)")
    if ha.ttl < MIN_TTL:
        raise ConfigError(f"ha.ttl must be {MIN_TTL:g} seconds or more: etcd rounds a shorter "
                          "lease up, and a head would be fenced on every slow renewal")
    if ha.leader_ttl < max(MIN_TTL, 2 * store_timeout):
        raise ConfigError(f"ha.leader_ttl must be 2 seconds or more and at least twice "
                          f"store.timeout ({store_timeout:g} s): a shorter lease expires on a "
                          "busy or failing-over store, and the lead would move between heads")
    for url in ha.fallback_urls:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            raise ConfigError(f"ha.fallback_urls: {url!r} is not a boot plane URL such as "
                              "http://10.10.0.2 or http://10.10.0.2:8081")
