"""The `[ha]` settings: several head nodes on one etcd store.

With `elect = true` the work that must happen once across the heads (the callback deadline
sweep, the handoff outbox's delivery, the rollouts' resumption, the boot retries, retention and
compaction) runs only on the head that leads the election (ha/election.py, ha/singletons.py);
a head that dies hands it on within `leader_ttl` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConfigError


@dataclass(frozen=True)
class HaSettings:
    #: run the once-only work under an election (turn on when several heads share a store)
    elect: bool = False
    #: seconds a dead leader keeps the lead before another head takes it over
    leader_ttl: float = 10.0


def check_ha(ha: HaSettings) -> None:
    if ha.leader_ttl < 2:
        raise ConfigError("ha.leader_ttl must be 2 seconds or more: a shorter lease expires "
                          "on a busy store and the lead would flap between heads")
