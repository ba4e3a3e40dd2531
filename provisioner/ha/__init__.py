"""Several head nodes on one etcd store: membership (who is alive), the split of DHCP clients
over the live heads, fencing (a head that lost its store session stops handing out what another
head may hand out too), and the election of the head that leads the work that must happen
once."""
