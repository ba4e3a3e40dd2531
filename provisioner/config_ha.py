"""The `[ha]` settings: several head nodes on one etcd store.

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

from dataclasses import dataclass
from urllib.parse import urlsplit

from provisioner.errors import ConfigError


@dataclass(frozen=True)
class HaSettings:
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
    if ha.leader_ttl < max(2.0, 2 * store_timeout):
        raise ConfigError(f"ha.leader_ttl must be 2 seconds or more and at least twice "
                          f"store.timeout ({store_timeout:g} s): a shorter lease expires on a "
                          "busy or failing-over store, and the lead would move between heads")
    for url in ha.fallback_urls:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            raise ConfigError(f"ha.fallback_urls: {url!r} is not a boot plane URL such as "
                              "http://10.10.0.2 or http://10.10.0.2:8081")
