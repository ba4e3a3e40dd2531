"""The store's key layout: the one module that knows how a key is spelled.

Every other module builds its keys with the functions here (`keys.node(mac)`,
`keys.audit(seq)` ...) or ranges over the prefixes here (`keys.NODES`); a test fails if a key
prefix is spelled anywhere else in provisioner/. `LAYOUT` is the same layout as data, one
`Key` per kind of key, from which the key table of the architecture notes is generated
(`python -m provisioner.inventory.keys`), so the table cannot drift from the code.

Appliance keys live under ROOT, the scheduler's under SCHED_ROOT: with etcd both share one
store, and either can be listed, watched or wiped by its root alone. Sequence numbers are a
time in nanoseconds, zero-padded to 20 digits so that keys sort in time order (`seq`).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

ROOT: Final = "/provisioner/v1/"
NODES: Final = ROOT + "nodes/"
NAMES: Final = ROOT + "names/"
GROUPS: Final = ROOT + "groups/"
LEASES: Final = ROOT + "leases/"
EVENTS: Final = ROOT + "events/"
BOOT_TOKENS: Final = ROOT + "boottokens/"
API_TOKENS: Final = ROOT + "apitokens/"
AUDIT: Final = ROOT + "audit/"
REIMAGE: Final = ROOT + "reimage/"
OUTBOX: Final = ROOT + "outbox/"
DEADLINES: Final = ROOT + "deadlines/"
LOCKS: Final = ROOT + "locks/"
ELECTIONS: Final = ROOT + "elections/"
HEADS: Final = ROOT + "heads/"

SCHED_ROOT: Final = "/scheduler/v1/"
SCHED_NODES: Final = SCHED_ROOT + "nodes/"
SCHED_JOBS: Final = SCHED_ROOT + "jobs/"


def seq(at: float, bump: int = 0) -> str:
    """The sequence part of an append-only key for time `at` (seconds); `bump` moves it on
    when a create-only write finds the key taken."""
    return f"{int(at * 1e9) + bump:020d}"


def is_seq(text: str) -> bool:
    """Whether `text` is a sequence as `seq` spells it (a page cursor of events or audit)."""
    return len(text) == 20 and text.isascii() and text.isdigit()


def seq_of(key: str) -> str:
    """The sequence an append-only key (events, audit) ends in."""
    return key.rsplit("/", 1)[-1]


def seq_time(key: str) -> float | None:
    """The time (seconds) of an append-only key ending in a sequence (events, audit); None if
    `key` does not end in one."""
    tail = seq_of(key)
    return int(tail) / 1e9 if is_seq(tail) else None


def node(mac: str) -> str:
    """`mac` in canonical form (MacAddress.value)."""
    return NODES + mac


def name(node_name: str) -> str:
    return NAMES + node_name


def group(group_name: str) -> str:
    return GROUPS + group_name


def lease(ip: IPv4Address | str) -> str:
    return f"{LEASES}{ip}"


def events(mac: str) -> str:
    """The prefix of one node's timeline (range it for the events in time order)."""
    return f"{EVENTS}{mac}/"


def event(mac: str, sequence: str) -> str:
    return events(mac) + sequence


def events_past(mac: str) -> str:
    """A key past every event of `mac` and before the next node's: a page cursor that skips
    the rest of this timeline (sequences are digits, which sort below "~")."""
    return events(mac) + "~"


def event_mac(key: str) -> str:
    """The MAC of an event key."""
    return key[len(EVENTS):].split("/", 1)[0]


def boot_token(mac: str) -> str:
    return BOOT_TOKENS + mac


def api_token(token_id: str) -> str:
    return API_TOKENS + token_id


def audit(sequence: str) -> str:
    return AUDIT + sequence


def reimage(rollout_id: str) -> str:
    return REIMAGE + rollout_id


def outbox(mac: str) -> str:
    return OUTBOX + mac


def deadline(mac: str) -> str:
    return DEADLINES + mac


def lock(lock_name: str) -> str:
    return LOCKS + lock_name


def election(election_name: str) -> str:
    return ELECTIONS + election_name


def head(head_name: str) -> str:
    return HEADS + head_name


def sched_node(node_name: str) -> str:
    return SCHED_NODES + node_name


def sched_job(job_id: str) -> str:
    """`job_id` as scheduler/models.py JOB_ID spells it (hex, no "/")."""
    return SCHED_JOBS + job_id


@dataclass(frozen=True, slots=True)
class Key:
    """One kind of key: `prefix` + `tail` is its pattern. `builder` is the function above
    that spells it; `owner` is the module that writes it."""

    prefix: str
    tail: str
    builder: str
    owner: str
    meaning: str

    @property
    def pattern(self) -> str:
        return self.prefix + self.tail


LAYOUT: Final[tuple[Key, ...]] = (
    Key(NODES, "<mac>", "node", "provisioner.inventory.repository",
        "a node (inventory/codec.py); the inventory's cache follows this prefix"),
    Key(NAMES, "<name>", "name", "provisioner.inventory.names",
        "claim of a node name by its node's MAC: names are unique by compare-and-swap"),
    Key(GROUPS, "<name>", "group", "provisioner.inventory.repository",
        "a group of settings (inventory/codec.py)"),
    Key(LEASES, "<ip>", "lease", "provisioner.dhcp.leases",
        "a DHCP lease, bound by compare-and-swap (inventory/codec.py)"),
    Key(EVENTS, "<mac>/<seq>", "event", "provisioner.inventory.events",
        "one step of a node's boot timeline, create-only"),
    Key(BOOT_TOKENS, "<mac>", "boot_token", "provisioner.security.tokens",
        "the hash of a node's one-boot token; deleted when redeemed"),
    Key(API_TOKENS, "<id>", "api_token", "provisioner.security.tokens",
        "an admin-plane bearer token: role and hash"),
    Key(AUDIT, "<seq>", "audit", "provisioner.security.audit",
        "one audit log entry, create-only"),
    Key(REIMAGE, "<id>", "reimage", "provisioner.nodes.rollout",
        "a rolling reimage's status, rewritten at every step"),
    Key(OUTBOX, "<mac>", "outbox", "provisioner.handoff.outbox",
        "a handoff to the scheduler not yet confirmed"),
    Key(DEADLINES, "<mac>", "deadline", "provisioner.nodes.lifecycle",
        "when a provisioning node's boot callback is overdue; deleted when it leaves "
        "provisioning, or by compare-and-swap by the one sweep that fails it"),
    Key(LOCKS, "<name>", "lock", "provisioner.inventory.locks",
        "a lock held by one process (owner and expiry), renewed while it works: a rollout"),
    Key(ELECTIONS, "<name>", "election", "provisioner.ha.election",
        "the leader of an election (its head), under the leader's store lease; its revision "
        "is the fencing token the leader's effects compare"),
    Key(HEADS, "<name>", "head", "provisioner.ha.membership",
        "a live head node and the addresses it advertises, under its store lease: gone when "
        "the head stops renewing it"),
    Key(SCHED_NODES, "<name>", "sched_node", "provisioner.scheduler.records",
        "the built-in scheduler's view of a node, with the hash of its agent's credential"),
    Key(SCHED_JOBS, "<id>", "sched_job", "provisioner.scheduler.records",
        "a built-in scheduler job; the id is random hex (older jobs: a counter, 10 digits)"),
)


def markdown_table() -> str:
    """LAYOUT as the Markdown table the architecture notes show."""
    rows = ["| key | owner | meaning |", "|---|---|---|"]
    rows += [f"| `{k.pattern}` | `{k.owner}` | {k.meaning} |" for k in LAYOUT]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
