"""DHCP from many MACs on one interface: one AF_PACKET socket per worker process, shared by all
of its simulated nodes and demultiplexed by xid.

Why a raw socket: a node has no address while it asks for one, and each node has its own MAC;
the kernel's UDP sockets send from the interface's MAC, so the frames are built here
(Ethernet, IPv4, UDP around provisioner/dhcp/packet.py's encoding) and read back raw. Python's
own socket module is enough (scapy's L2 socket would add a dissector per frame). A classic BPF
filter keeps only UDP to port 68, so the kernel does not copy the bulk HTTP traffic of the
other nodes into this socket. The socket is bound to ETH_P_IP, not ETH_P_ALL, so frames are
delivered to it after the interface's ingress hooks: the storm's packet loss (nftables on the
ingress hook) reaches DHCP like every other protocol.

Every node sets the broadcast flag (RFC 2131 section 4.1, as PXE ROMs and iPXE do): it cannot
receive unicast before it has an address, so servers answer to the broadcast address.
Retransmission follows RFC 2131 section 4.1: 4 s, then doubled up to 64 s, each randomised by
+/- 1 s.
"""

from __future__ import annotations

import asyncio
import ctypes
import random
import socket
import struct
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from provisioner.dhcp.options import MessageType, Opt, encode_client_arch, encode_ip
from provisioner.dhcp.packet import BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, DhcpPacket, decode
from provisioner.dhcp.packet import encode as encode_dhcp
from provisioner.errors import MalformedPacket

ETH_P_IP: Final = 0x0800
SO_ATTACH_FILTER: Final = 26
BROADCAST_MAC: Final = b"\xff" * 6
FIRST_TIMEOUT: Final = 4.0  # RFC 2131 section 4.1
MAX_TIMEOUT: Final = 64.0
ATTEMPTS: Final = 5  # a DISCOVER or REQUEST sent this many times, then the exchange fails
NAK_RESTARTS: Final = 8
#: classic BPF, "ip and udp and not a fragment and udp dst port 68" on an Ethernet frame
_FILTER: Final = (
    (0x28, 0, 0, 12), (0x15, 0, 8, ETH_P_IP),  # ethertype IPv4
    (0x30, 0, 0, 23), (0x15, 0, 6, 17),  # protocol UDP
    (0x28, 0, 0, 20), (0x45, 4, 0, 0x1FFF),  # not a fragment
    (0xB1, 0, 0, 14), (0x48, 0, 0, 16),  # x = IP header length; destination port
    (0x15, 0, 1, 68), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0),
)
ARCH_CODES: Final = {"bios": 0, "uefi": 7}  # RFC 4578 section 2.1 (7: EFI x86-64 in practice)


class DhcpFailed(Exception):
    """An exchange that got no answer after every retransmission, or NAKs only."""


class DhcpNak(Exception):
    pass


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def frame(mac: bytes, payload: bytes) -> bytes:
    """A broadcast Ethernet frame from `mac`: IPv4 0.0.0.0 -> 255.255.255.255, UDP 68 -> 67
    (RFC 2131 section 4.1: a client without an address sends from 0.0.0.0). The UDP checksum
    is 0, which IPv4 allows (RFC 768)."""
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), random.getrandbits(16), 0,
                       64, 17, 0, bytes(4), b"\xff" * 4)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return BROADCAST_MAC + mac + struct.pack("!H", ETH_P_IP) + head + udp


def payload_of(data: bytes) -> bytes | None:
    """The UDP payload of an Ethernet frame the filter let through, or None."""
    if len(data) < 14 + 20 + 8:
        return None
    ihl = (data[14] & 0x0F) * 4
    return data[14 + ihl + 8:]


def open_socket(interface: str) -> socket.socket:
    """The raw socket, filter attached before it is bound, so no unfiltered frame queues."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    program = b"".join(struct.pack("HBBI", *op) for op in _FILTER)
    buffer = ctypes.create_string_buffer(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(_FILTER), ctypes.addressof(buffer)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((interface, ETH_P_IP))
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class OfferedLease:
    ip: IPv4Address
    server: IPv4Address
    prefix: int
    filename: str
    next_server: IPv4Address


def request_options(kind: MessageType, arch: str, ipxe: bool, client_uuid: uuid.UUID
                    ) -> dict[int, bytes]:
    """What a PXE ROM (or iPXE, `ipxe`) puts in a DISCOVER or REQUEST: option 60 with the
    architecture (PXE spec 2.1 table 2-1), 93, 94 and 97 (RFC 4578), the parameter list, and
    for iPXE its user class (77) and encapsulated options (175)."""
    code = ARCH_CODES[arch]
    options: dict[int, bytes] = {
        Opt.MESSAGE_TYPE: bytes([kind]), Opt.MAX_MESSAGE_SIZE: struct.pack("!H", 1472),
        Opt.PARAMETER_REQUEST_LIST: bytes([1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 119, 128, 175]),
        Opt.VENDOR_CLASS_ID: f"PXEClient:Arch:{code:05d}:UNDI:003016".encode(),
        Opt.CLIENT_ARCH: encode_client_arch([code]), Opt.CLIENT_NDI: b"\x01\x03\x10",
        Opt.CLIENT_UUID: b"\x00" + client_uuid.bytes}
    if ipxe:
        options[Opt.USER_CLASS] = b"iPXE"
        options[Opt.IPXE_ENCAP] = b"\x13\x01\x01"  # feature: HTTP (iPXE's FEATURE_HTTP)
    return options


class RawDhcp:
    """The worker's DHCP socket: `exchange` runs one DISCOVER/OFFER/REQUEST/ACK for one MAC."""

    def __init__(self, interface: str) -> None:
        self.sock = open_socket(interface)
        self._waiting: dict[int, asyncio.Queue[DhcpPacket]] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(256):  # bounded: other callbacks get their turn
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return
            payload = payload_of(data)
            try:
                packet = decode(payload) if payload else None
            except MalformedPacket:
                continue
            if packet is not None and packet.op == BOOTREPLY:
                queue = self._waiting.get(packet.xid)
                if queue is not None:
                    queue.put_nowait(packet)

    async def exchange(self, mac: str, arch: str, *, ipxe: bool,
                       retried: list[int]) -> OfferedLease:
        """A lease for `mac`; `retried[0]` is incremented at every retransmission and at every
        restart after a NAK (RFC 2131 section 4.4.1: a NAK sends the client back to INIT,
        to DISCOVER again), NAK_RESTARTS times at most."""
        for _ in range(NAK_RESTARTS):
            try:
                return await self._dora(mac, arch, ipxe=ipxe, retried=retried)
            except DhcpNak:
                retried[0] += 1
        raise DhcpFailed(f"DHCP NAK {NAK_RESTARTS} times")

    async def _dora(self, mac: str, arch: str, *, ipxe: bool,
                    retried: list[int]) -> OfferedLease:
        chaddr = bytes.fromhex(mac.replace(":", ""))
        xid = random.getrandbits(32)
        while xid in self._waiting:
            xid = random.getrandbits(32)
        queue: asyncio.Queue[DhcpPacket] = asyncio.Queue()
        self._waiting[xid] = queue
        client_uuid = uuid.UUID(int=int.from_bytes(chaddr, "big"))
        try:
            offer = await self._ask(queue, chaddr, xid, kind=MessageType.DISCOVER,
                                    want=MessageType.OFFER,
                                    options=request_options(MessageType.DISCOVER, arch, ipxe,
                                                            client_uuid), retried=retried)
            options = request_options(MessageType.REQUEST, arch, ipxe, client_uuid)
            server = offer.server_id or offer.siaddr
            options[Opt.REQUESTED_IP] = encode_ip(offer.yiaddr)
            options[Opt.SERVER_ID] = encode_ip(server)
            ack = await self._ask(queue, chaddr, xid, kind=MessageType.REQUEST,
                                  want=MessageType.ACK, options=options, retried=retried)
        finally:
            del self._waiting[xid]
        mask = ack.options.get(Opt.SUBNET_MASK, b"\xff\xff\xff\x00")
        # The boot file is option 67 when the server put it there (dnsmasq does when it was
        # asked for), else the file field (RFC 2132 section 9.5; PXE and iPXE read both).
        filename = ack.options.get(Opt.BOOTFILE_NAME, b"").rstrip(b"\0") or ack.file
        return OfferedLease(ack.yiaddr, server, bin(int.from_bytes(mask, "big")).count("1"),
                            filename.decode(errors="replace"), ack.siaddr)

    async def _ask(self, queue: asyncio.Queue[DhcpPacket], chaddr: bytes, xid: int, *,
                   kind: MessageType, want: MessageType, options: dict[int, bytes],
                   retried: list[int]) -> DhcpPacket:
        request = DhcpPacket(op=BOOTREQUEST, xid=xid, chaddr=chaddr + bytes(10),
                             flags=BROADCAST_FLAG, options=options)
        data = frame(chaddr, encode_dhcp(request))
        timeout = FIRST_TIMEOUT
        for attempt in range(ATTEMPTS):
            if attempt:
                retried[0] += 1
            self.sock.send(data)
            answer = await self._answer(queue, chaddr, want, timeout + random.uniform(-1, 1))
            if answer is not None:
                return answer
            timeout = min(timeout * 2, MAX_TIMEOUT)
        raise DhcpFailed(f"no DHCP {want.name} after {ATTEMPTS} {kind.name}s")

    async def _answer(self, queue: asyncio.Queue[DhcpPacket], chaddr: bytes, want: MessageType,
                      timeout: float) -> DhcpPacket | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                packet = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                return None
            if packet.chaddr[:6] != chaddr:
                continue
            if packet.message_type is MessageType.NAK:
                raise DhcpNak("DHCP NAK")
            if packet.message_type is want:
                return packet
        return None
