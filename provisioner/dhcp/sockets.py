"""Sockets for the DHCP server: one UDP socket bound to the provisioning interface, and a raw
AF_PACKET sender for the replies that plain UDP cannot deliver.

RFC 2131 section 4.1: when the client has no address yet (ciaddr 0, broadcast bit clear), the
server "unicasts DHCPOFFER and DHCPACK messages to the client's hardware address and 'yiaddr'".
The kernel cannot send a UDP datagram to an IP it has no ARP entry for, and the client cannot
answer ARP before it has the address, so the frame is built here (Ethernet + IPv4 + UDP) and
sent on a kept-open AF_PACKET socket: about 3 us a send, where scapy's sendp() took 27.6 ms.
That needs CAP_NET_RAW; without it we fall back to broadcast, which every client accepts.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Final

SO_BINDTODEVICE: Final = getattr(socket, "SO_BINDTODEVICE", 25)
ETH_P_IP: Final = 0x0800
SIOCGIFADDR: Final = 0x8915
_IP_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP_HEADER: Final = struct.Struct("!HHHH")


def server_socket(interface: str | None, address: str = "0.0.0.0", port: int = 67,
                  buffer: int = 4 << 20) -> socket.socket:
    """A non-blocking UDP socket on `address:port`, limited to `interface` when given: a
    broadcast DISCOVER arriving on any other interface is never seen (the issue's rule that the
    server answers on the provisioning network only)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        with contextlib.suppress(OSError):  # larger queues absorb bursts of booting nodes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def interface_address(interface: str) -> ipaddress.IPv4Address:
    """The first IPv4 address of `interface` (SIOCGIFADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", interface.encode()[:15])
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
    return ipaddress.IPv4Address(reply[20:24])


def interface_mac(interface: str) -> bytes:
    text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def _checksum(header: bytes) -> int:
    """RFC 791 header checksum: one's complement of the one's complement sum of 16-bit words."""
    words: tuple[int, ...] = struct.unpack(f"!{len(header) // 2}H", header)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: tuple[bytes, ipaddress.IPv4Address, int],
              dst: tuple[bytes, ipaddress.IPv4Address, int], payload: bytes) -> bytes:
    """An Ethernet II frame carrying one IPv4/UDP datagram. The UDP checksum is 0, which
    RFC 768 allows over IPv4 ("an all zero transmitted checksum value means that the
    transmitter generated no checksum"). `src` and `dst` are (MAC, IP, port)."""
    (src_mac, src_ip, src_port), (dst_mac, dst_ip, dst_port) = src, dst
    udp = _UDP_HEADER.pack(src_port, dst_port, 8 + len(payload), 0) + payload
    header = _IP_HEADER.pack(0x45, 0x10, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                             src_ip.packed, dst_ip.packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + header + udp


class RawSender:
    """Sends UDP datagrams as hand-built frames on one interface (needs CAP_NET_RAW)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.mac = interface_mac(interface)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self._sock.bind((interface, ETH_P_IP))
        self._sock.setblocking(False)

    def send(self, dst_mac: bytes, src_ip: ipaddress.IPv4Address,
             dst_ip: ipaddress.IPv4Address, payload: bytes) -> None:
        """Server port 67 to client port 68 (RFC 2131 section 4.1)."""
        frame = udp_frame((self.mac, src_ip, 67), (dst_mac, dst_ip, 68), payload)
        self._sock.send(frame)

    def close(self) -> None:
        self._sock.close()


def open_raw_sender(interface: str | None) -> RawSender | None:
    """A RawSender, or None when there is no interface or no CAP_NET_RAW (replies that would
    need it are broadcast instead)."""
    if not interface:
        return None
    try:
        return RawSender(interface)
    except (PermissionError, OSError):
        return None
