"""The boot storm: N simulated nodes, each a real client on the wire, booting at once from the
lab's appliance (or, in bench/storm.py, from a dnsmasq + nginx baseline)."""
