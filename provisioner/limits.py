"""The resource limits of the planes that face the provisioning network, with their defaults.

They are ordinary `[boot]`, `[tftp]` and `[dhcp]` keys: config.py's BootSettings, TftpSettings
and DhcpSettings extend these classes, so a limit is read, converted and overridden by
PROVISIONER_SECTION_KEY like every other setting. They live here to keep config.py short and to
show in one place what a single machine on the network can make the appliance hold.

Why these numbers:

- boot: a booting node opens one connection at a time (iPXE), its init a few; 32 per address
  is far above that and far below the global 2048, so one address cannot fill the plane. 256
  of the 2048 are kept for addresses that hold a lease (or a static address, or a ProxyDHCP
  sighting): strangers, however many addresses they use, get at most 1792.
- the header deadline (10 s) bounds a client that opens a connection and trickles its request;
  the idle one (30 s) a kept-alive connection with no next request; the write one (30 s) a
  client that stops reading: each WRITE_CHUNK of a file must be taken within it.
- dhcp: see DhcpLimits.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConfigError


@dataclass(frozen=True)
class BootLimits:
    max_connections: int = 2048  # open connections in all
    #: of max_connections, kept for addresses holding a lease, static address or sighting
    reserved_connections: int = 256
    max_per_source: int = 32  # open connections from one address
    header_timeout: float = 10.0  # s from a request's first byte (or the connect) to its end
    idle_timeout: float = 30.0  # s a kept-alive connection may wait for its next request
    write_timeout: float = 30.0  # s a client may take to accept each 4 MiB of a reply


@dataclass(frozen=True)
class TftpLimits:
    max_transfers: int = 512  # concurrent transfers in all
    max_per_client: int = 16  # concurrent transfers from one address (refused: ERROR 0)


@dataclass(frozen=True)
class DhcpLimits:
    """A token bucket per client hardware address (chaddr): `mac_burst` packets at once, then
    `mac_rate` per second. A real client never comes near it: RFC 2131 section 4.1 retransmits
    after ~4 s, doubling; PXE ROMs at 4, 8, 16, 32 s; iPXE from 1 s, doubling to 10 s. A whole
    boot (ROM, iPXE, the OS's client: DISCOVER, REQUEST, port 4011, each maybe duplicated by
    two relays) is under 20 packets in its first seconds, and no stage sends faster than one a
    second. A MAC flooding beyond that is dropped before any decision, lease or store write."""

    mac_burst: int = 20  # packets a MAC may send at once
    mac_rate: float = 1.0  # packets per second a MAC may send after its burst
    #: MACs with a bucket at most; past it the least recently seen is forgotten (a forgotten
    #: MAC starts again with a full bucket: a flood of made-up MACs cannot grow the table)
    mac_table: int = 4096


def check_limits(boot: BootLimits, tftp: TftpLimits, dhcp: DhcpLimits) -> None:
    """Refuse limits that cannot work, naming the key to fix."""
    if boot.max_connections < 1 or boot.max_per_source < 1:
        raise ConfigError("boot.max_connections and boot.max_per_source must be 1 or more")
    if not 0 <= boot.reserved_connections < boot.max_connections:
        raise ConfigError("boot.reserved_connections must be 0 or more and less than "
                          f"boot.max_connections ({boot.max_connections})")
    if min(boot.header_timeout, boot.idle_timeout, boot.write_timeout) <= 0:
        raise ConfigError("boot.header_timeout, idle_timeout and write_timeout must be more "
                          "than 0 seconds")
    if tftp.max_transfers < 1 or tftp.max_per_client < 1:
        raise ConfigError("tftp.max_transfers and tftp.max_per_client must be 1 or more")
    if dhcp.mac_burst < 1 or dhcp.mac_rate <= 0 or dhcp.mac_table < 1:
        raise ConfigError("dhcp.mac_burst and dhcp.mac_table must be 1 or more and "
                          "dhcp.mac_rate more than 0 per second")


class OncePer:
    """At most one log line per key every `every` seconds, for log lines a sender can provoke
    at will (the refusals a flood causes, on every plane). Bounded: past `limit` keys the
    oldest is forgotten. Pure: the time is passed in."""

    def __init__(self, every: float, *, limit: int = 4096) -> None:
        self.every = every
        self.limit = limit
        self._last: dict[object, float] = {}

    def due(self, key: object, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last.pop(key, None)
        if len(self._last) >= self.limit:
            self._last.pop(next(iter(self._last)))
        self._last[key] = now
        return True
