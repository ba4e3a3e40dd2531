"""The DHCP server's counters: one collections.Counter, read by `provisioner status` and the
API's /stats. Pure (no IO): the keys are built here so that every part of the server spells
them the same way.

- received:<message>   every decoded packet, by policy.classify's decision (received:discover,
                       received:request, received:ignore, ...)
- dropped:<reason>     malformed datagrams, by packet.decode's reason; dropped:send_backlog,
                       replies dropped while the socket's send queue was full
- ignored:<reason>     well-formed packets not answered, by policy's reason (and no_subnet,
                       no_boot_file)
- sent:<type>          replies sent, by message type (sent:offer, sent:ack, sent:nak)
- errors               a packet or an exchange that failed on a bug or a store error
- pool_exhausted, request_silent, lease_declined, lease_released, discovered,
  discovery_dry_run, foreign_server, read_pauses
- relay_info_ignored    option 82 dropped: not from a relay the config lists (RFC 3046)
- discovery_full        unknown MACs not recorded: [dhcp] discovery_limit was reached
- discovery_expired     discovered nodes deleted: not accepted, not seen for discovery_ttl
- proxy_sightings       addresses recorded from PXE exchanges in proxy mode
- rate_limited          requests dropped: their chaddr sent faster than [dhcp] mac_burst/mac_rate
- lease_cached          REQUESTs ACKed from the lease already recorded, with no store write
                        ([dhcp] lease_cache_threshold); lease_cached:store_down, the same
                        while the store did not answer
- offer_withheld:store_down, ack_withheld:store_down
                        DISCOVERs and REQUESTs not answered while the store did not answer:
                        the client has no recorded lease that could be given again
"""

from __future__ import annotations

import collections
from typing import Final, TypeAlias

from provisioner.dhcp import policy
from provisioner.dhcp.options import MessageType

Counters: TypeAlias = collections.Counter[str]

_SENT_KEY: Final[dict[MessageType | None, str]] = {
    None: "sent:bootp", **{m: f"sent:{m.name.lower()}" for m in MessageType}}
_RECEIVED_KEY: Final[dict[type, str]] = {
    policy.Discover: "received:discover",
    policy.DhcpRequest: "received:request",
    policy.Decline: "received:decline",
    policy.Release: "received:release",
    policy.Inform: "received:inform",
    policy.BootServerRequest: "received:bootserverrequest",
    policy.ForeignServerReply: "received:foreignserverreply",
    policy.Ignore: "received:ignore",
}


def received_key(decision: policy.Decision) -> str:
    """The counter of a decision; the names are stable, whatever the classes are called."""
    return _RECEIVED_KEY[type(decision)]


def sent_key(message_type: MessageType | None) -> str:
    return _SENT_KEY[message_type]
