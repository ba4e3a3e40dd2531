#!/usr/bin/env bash
# Install everything provisioner needs on Debian 12: the Debian packages its servers and tests use,
# and a virtualenv in .venv with the package and its dev tools. Safe to run again: it installs
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd for the etcd store and its tests; the rest are the real clients the protocol tests run:
# busybox udhcpc, ISC dhclient, Kea's perfdhcp, tftp-hpa's tftp, atftp, curl. ipxe provides the
# first-stage binaries TFTP serves (undionly.kpxe, ipxe.efi, snponly.efi).
DEBIAN_PACKAGES=(etcd-server etcd-client iproute2 sqlite3 busybox-static isc-dhcp-client
                 kea-admin tftp-hpa atftp curl ipxe
                 qemu-system-x86 ipxe-qemu ovmf kmod cpio xz-utils debootstrap
                 openipmi ipmitool slurmctld slurm-client munge)
VENV=${PROVISIONER_VENV:-.venv}

need_apt=()
for pkg in "${DEBIAN_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    # Debian starts some of these as services on install; provisioner runs its own when it
    # needs one, on ports and addresses it chooses.
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
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
