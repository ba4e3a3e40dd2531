"""The lab: network namespaces, bridges, taps and QEMU nodes, for the demo and end-to-end tests."""
