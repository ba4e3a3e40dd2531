"""The reply path: encode a reply and send it where RFC 2131 section 4.1 says it goes
(replies.reply_destination), on the socket the request came in on, or as a hand-built frame to
the client's hardware address when it has no address yet (sockets.RawSender).
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address
from typing import Final

from provisioner.dhcp.counters import Counters, sent_key
from provisioner.dhcp.packet import DhcpPacket, encode
from provisioner.dhcp.replies import reply_destination
from provisioner.dhcp.sockets import RawSender

log = logging.getLogger(__name__)
_TEXT_LIMIT: Final = 4096
_TEXT: dict[IPv4Address, str] = {}


class ReplySender:
    """`server_ip` is our address on the segment (set when the server starts): the source of
    raw frames and the server identifier (option 54) of every reply. `raw` is None without
    CAP_NET_RAW or an interface: replies that need it are broadcast instead, which every
    client accepts."""

    def __init__(self, counters: Counters) -> None:
        self.server_ip = IPv4Address(0)
        self.raw: RawSender | None = None
        self._counters = counters

    def send(self, request: DhcpPacket, reply: DhcpPacket,
             transport: asyncio.DatagramTransport,
             origin: tuple[IPv4Address, int] | None = None) -> None:
        """`origin`: where a port-4011 request came from, answered there (PXE spec 2.1
        section 2.2.4)."""
        data = encode(reply)
        dest = reply_destination(request, reply, source=origin)
        self._counters[sent_key(reply.message_type)] += 1
        if dest.raw and self.raw is not None:
            try:
                self.raw.send(request.chaddr[:6], self.server_ip, dest.ip, data)
                return
            except OSError as exc:
                log.debug("dhcp: raw send failed (%s); broadcasting", exc)
        ip = "255.255.255.255" if dest.raw else _text(dest.ip)
        transport.sendto(data, (ip, dest.port))

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def _text(ip: IPv4Address) -> str:
    """str(ip), remembered: formatting an address costs more than the rest of a send."""
    text = _TEXT.get(ip)
    if text is None:
        if len(_TEXT) >= _TEXT_LIMIT:
            _TEXT.clear()
        text = _TEXT[ip] = str(ip)
    return text
