"""The HTTP API: admin, node and boot planes (DESIGN.md section 6)."""
