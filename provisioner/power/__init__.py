"""Power control of nodes: IPMI (ipmitool), Redfish (httpx), QEMU (QMP) and manual."""
