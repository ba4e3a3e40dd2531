"""The peers our servers are measured against, started and loaded by the benchmarks themselves.

Every benchmark under bench/ prints our figures and the peers' figures from the same run. The
peers are Debian packages started here with generated configurations, in network namespaces the
benchmark creates (`testbed`), never as system services:

- `dhcpd`: Kea (kea-dhcp4, memfile lease file) and dnsmasq as DHCP servers; `perfdhcp` loads
  them and ours alike (Kea's perfdhcp, broadcast DORA from the client namespace);
- `tftpd`: tftp-hpa's in.tftpd and dnsmasq as TFTP servers (atftpd conflicts with tftpd-hpa in
  Debian, so tftp-hpa is the TFTP peer);
- `nginx`: nginx with sendfile, the HTTP file-server peer;
- `etcd`: a throw-away one-member etcd, the store peer (and our etcd backend's server);
- `xz`: `xz -T0`, the compressor peer of the image builder.

`testbed` owns the namespaces and every process started in them: closing it (on exit, on
failure, on Ctrl-C or SIGTERM) stops each process by PID and deletes the namespaces by name.
`cpu` holds the CPU accounting every benchmark uses to flag runs disturbed by other load.
Nothing here reaches outside the namespaces or the loopback.
"""
