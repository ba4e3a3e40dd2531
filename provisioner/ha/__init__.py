"""Several head nodes on one etcd store: membership (who is alive), the split of DHCP clients
over the live heads, and fencing (a head that lost its store session stops handing out what
another head may hand out too)."""
