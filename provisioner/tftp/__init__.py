"""TFTP: a sans-IO read server (RFC 1350, 2347, 2348, 2349, 7440) and its asyncio glue.

See DESIGN.md section 3. The pure core (no sockets, clocks or files):

- packet: the datagram codec;  paths: canonical filenames, confinement by name;
- screening: what to do with a datagram on port 69;
- negotiation: the options a transfer runs with;  retransmit: when to resend, when to give up;
- readers: the Source protocol and the blocks cut from it (octet, netascii);
- transitions: the state table and events;  session: one read transfer, driven by `now`.

The glue: sources (files under the root, rendered content), poller (one epoll for every
transfer socket), transfer (one transfer's sockets and timer), server (port 69, limits,
counters).
"""
