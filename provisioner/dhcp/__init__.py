"""DHCP for PXE: a sans-IO core and the asyncio server around it.

The pure core (no asyncio, sockets, clock or files; tested with hand-built packets):
packet.py decodes and encodes datagrams, options.py names and types option values, policy.py
classifies a packet and decides a request, bootfile.py picks the first-stage boot file,
replies.py builds the answers and says where they go, subnets.py selects the subnet and a
free address, counters.py names the counters.

The glue: server.py (lifecycle and dispatch), transport.py (the receive loop), answers.py and
discovery.py (acting on each decision), send.py (the reply path), leases.py (bindings in the
store), inflight.py (exchanges awaiting the store), sockets.py (UDP and raw sockets).
"""
