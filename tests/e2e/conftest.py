"""End-to-end tests boot QEMU nodes from the appliance; their fixtures live in
tests/support/labs.py (shared with tests/security)."""
