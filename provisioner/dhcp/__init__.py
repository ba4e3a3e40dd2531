"""DHCP for PXE: a sans-IO core (packet, options, policy) and the asyncio server around it.

packet.py decodes and encodes datagrams, options.py names and types option values, policy.py
makes every decision that needs no store or socket. Only server.py awaits.
"""
