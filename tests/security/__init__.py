"""Attacks on the appliance as a process on another node (or a local user) would make them."""
