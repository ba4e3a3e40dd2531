"""The `[retention]` settings: how much history the store keeps, and how it is trimmed.

A background task (runtime/retention.py) deletes what is past these bounds every `interval`
seconds, `batch` keys per write, so the store's size follows the settings rather than the
appliance's age. With etcd it also compacts the revision history (etcd keeps every old
version of every key until compacted, and its database grows with them).
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConfigError


@dataclass(frozen=True)
class RetentionSettings:
    #: boot events kept per node (the newest), and the oldest kept, in days
    events_per_node: int = 200
    events_days: float = 30.0
    #: audit entries kept in all (the newest), and the oldest kept, in days
    audit_records: int = 100_000
    audit_days: float = 365.0
    #: a DHCP lease that expired this many days ago is deleted (until then an expired lease
    #: keeps its address for the same MAC when it comes back)
    leases_days: float = 7.0
    #: finished rolling reimages kept (the newest), and the oldest kept, in days
    rollouts_kept: int = 1000
    rollouts_days: float = 365.0
    #: seconds between retention passes, and keys deleted per write
    interval: float = 600.0
    batch: int = 100
    #: etcd only: seconds between compactions (0: never), and the revisions kept behind the
    #: newest; never past what this appliance's own watches have applied
    compact_interval: float = 600.0
    compact_keep: int = 10_000


def check_retention(retention: RetentionSettings) -> None:
    """Refuse settings that would delete everything or never finish a pass."""
    counts = (retention.events_per_node, retention.audit_records, retention.compact_keep,
              retention.rollouts_kept)
    ages = (retention.events_days, retention.audit_days, retention.leases_days,
            retention.rollouts_days)
    if min(counts) < 1 or min(ages) <= 0:
        raise ConfigError("[retention] counts must be 1 or more and ages (days) more than 0; "
                          "they bound what is kept, not whether anything is")
    if retention.interval <= 0 or retention.compact_interval < 0:
        raise ConfigError("retention.interval must be more than 0 seconds and "
                          "retention.compact_interval 0 (never) or more")
    if not 1 <= retention.batch <= 128:
        raise ConfigError("retention.batch must be 1 to 128 (etcd's default --max-txn-ops)")
