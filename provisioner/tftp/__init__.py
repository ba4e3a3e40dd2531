"""TFTP: a sans-IO codec and read session (packet, paths, session); sources and server adapt them.

See DESIGN.md section 3. The modules here are the pure core: no sockets, clocks or files.
"""
