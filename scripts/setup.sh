#!/usr/bin/env bash
# Install everything provisioner needs on Debian 12: every external program its servers, tests
# and benchmarks start, and a virtualenv in .venv with the package and its dev tools.
# Safe to run again, and quick then: it installs only what is missing.
# tests/test_setup_packages.py checks that every program the code starts comes from a package
# listed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# The store and the lab: etcd, iproute2 (namespaces), sqlite3, QEMU with iPXE and OVMF, what
# the image builder runs (kmod, cpio, xz, debootstrap), IPMI and Slurm for power and handoff.
# The real clients the protocol tests run: busybox udhcpc, ISC dhclient, Kea's perfdhcp,
# tftp-hpa's tftp, atftp, curl. ipxe provides the first-stage binaries TFTP serves.
# The real servers tests and benches compare against or detect: Kea, dnsmasq (dnsmasq-base:
# the binary without Debian's service), nginx, tftpd-hpa (in.tftpd), Prometheus; nftables,
# iptables and libpcap for the benches; vagrant + vagrant-libvirt for `vagrant validate`.
# tftpd-hpa and atftpd conflict in Debian (both are a TFTP server on port 69): tftpd-hpa is the
# server the TFTP tests and benches run as a peer, and atftp is installed only as a client.
DEBIAN_PACKAGES=(etcd-server etcd-client iproute2 sqlite3 busybox-static isc-dhcp-client
                 kea-admin tftp-hpa atftp curl ipxe file openssl
                 qemu-system-x86 ipxe-qemu ovmf kmod cpio xz-utils zstd debootstrap
                 openipmi ipmitool slurmctld slurm-client munge procps
                 kea-dhcp4-server dnsmasq-base nginx nginx-light tftpd-hpa prometheus
                 nftables iptables libpcap0.8 vagrant vagrant-libvirt systemd passwd)
# Debian starts these as services on install (etcd, kea, nginx, tftpd-hpa, prometheus);
# provisioner's tests start their own, on ports and addresses they choose, and need 67, 69, 80
# and 9090 free.
SERVICES=(etcd kea-dhcp4-server nginx tftpd-hpa prometheus)
DAEMONS="etcd kea-dhcp4 nginx in.tftpd prometheus dnsmasq"
PORTS="67 69 80 9090"
VENV=${PROVISIONER_VENV:-.venv}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

disable_services() {
    local svc
    for svc in "${SERVICES[@]}"; do
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
            $SUDO /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
            $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done
}

# Without systemd an init script may leave a daemon behind: end, by PID, a packaged daemon
# (one of DAEMONS, adopted by init) still listening on one of PORTS.
stop_leftover_daemons() {
    command -v ss >/dev/null || return 0
    local port pid comm
    for port in $PORTS; do
        for pid in $(ss -H -lnptu "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
            comm=$(ps -o comm= -p "$pid" 2>/dev/null || true)
            if [ -n "$comm" ] && [[ " $DAEMONS " == *" $comm "* ]] \
                    && [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = 1 ]; then
                echo "setup: stopping $comm (pid $pid) started by its package on port $port"
                $SUDO kill "$pid" 2>/dev/null || true
            fi
        done
    done
}

need_apt=()
for pkg in "${DEBIAN_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    # Another apt-get may hold the lock (a second checkout running this script): wait for it.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${need_apt[@]}"
    disable_services
fi
stop_leftover_daemons

# `provisioner serve` gives up root for this user once its ports are bound ([service] user), and
# contrib/systemd runs the services as it.
if ! id -u provisioner >/dev/null 2>&1; then
    echo "setup: creating the system user provisioner"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin provisioner
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.provisioner-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
echo "setup: ready ($("$VENV/bin/provisioner" --version))"
