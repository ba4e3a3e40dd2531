"""Attacks on the appliance as a process on another node (or a local user) would make them.

Where each rule of the security model is proven (the e2e ones from a real second machine on
the lab bridge holding its own lease, tests/security/intruder.py):

- boot plane bound to the node's address, no side effects, only boot artifacts, token once
  per boot: test_attacks.py (e2e), tests/boot/test_routes.py, tests/test_tokens.py
- the boot callback only from the node's own address, once: test_attacks.py,
  tests/api/test_node_plane.py
- scheduler agent credential, jobs as their user, unguessable job ids: test_attacks.py,
  tests/scheduler/test_agent_auth.py, tests/handoff/test_agent_credential.py
- discovery waits for accept, option 82 only from relays, bounded discovery: test_attacks.py,
  tests/dhcp/test_discovery_netns.py, tests/dhcp/test_discovery_bounds.py
- a private data dir, serve without root, systemd units: test_privileges.py,
  test_systemd_units.py, tests/store/test_sqlite_backend.py
- the admin plane: test_admin_*.py
"""
