"""The failover probe of bench/ha.py: run on the client side of a Testbed, it SIGKILLs a head by
PID and measures the time to the first OFFER from another head for a client of the dead head's
share.

It acts as a DHCP relay agent (giaddr = its address, RFC 2131 section 4.1: the servers answer
it on port 67), broadcasting a DISCOVER every `interval` seconds from the MACs it is given in
turn (several MACs: a head's per-MAC rate limit must not slow the probe), and reads the answers.
It prints one JSON line: {"gap": seconds or null, "sent": DISCOVERs sent}. Bounded by `limit`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from ipaddress import IPv4Address
from typing import Any

SO_BINDTODEVICE = 25
MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


def discover(mac: bytes, xid: int, relay: str) -> bytes:
    header = HEADER.pack(1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4), bytes(4),
                         IPv4Address(relay).packed, mac.ljust(16, b"\0"), b"", b"")
    return header + MAGIC + bytes((53, 1, 1, 255)) + bytes(60)


def offer_server(data: bytes) -> str | None:
    """The server id (option 54) of an OFFER, else None."""
    if len(data) < HEADER.size + 4 or data[0] != 2 or data[HEADER.size:HEADER.size + 4] != MAGIC:
        return None
    options, i, found = data[HEADER.size + 4:], 0, {}
    while i < len(options) and options[i] != 255:
        if options[i] == 0:
            i += 1
            continue
        if i + 1 >= len(options):
            break
        code, size = options[i], options[i + 1]
        found[code] = options[i + 2:i + 2 + size]
        i += 2 + size
    if found.get(53) != b"\x02" or len(found.get(54, b"")) != 4:
        return None
    return str(IPv4Address(found[54]))


def probe(args: dict[str, Any]) -> dict[str, object]:
    """`args`: ifname, relay (our address), victim_pid, victim_ip, macs (hex), interval, limit
    (seconds)."""
    relay, victim_ip, interval = str(args["relay"]), str(args["victim_ip"]), args["interval"]
    macs = [bytes.fromhex(m) for m in args["macs"]]
    ifname, limit = str(args["ifname"]), float(args["limit"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")
    sock.bind(("0.0.0.0", 67))
    os.kill(int(args["victim_pid"]), signal.SIGKILL)
    killed = time.monotonic()
    sent, due = 0, killed
    while (now := time.monotonic()) - killed < limit:
        if now >= due:
            sock.sendto(discover(macs[sent % len(macs)], 0x4A000000 + sent, relay),
                        ("255.255.255.255", 67))
            sent, due = sent + 1, due + interval
        sock.settimeout(max(0.001, due - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        server = offer_server(data)
        if server is not None and server != victim_ip:
            return {"gap": time.monotonic() - killed, "sent": sent}
    return {"gap": None, "sent": sent}


if __name__ == "__main__":
    print(json.dumps(probe(json.load(sys.stdin))), flush=True)
