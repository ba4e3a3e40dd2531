#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the appliance in the foreground on the embedded
# store: `provisioner serve`, with a sample group and node so there is something to look at.
# Safe to run again. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PROVISIONER_DATA_DIR=${PROVISIONER_DATA_DIR:-$PWD/.provisioner}
# On this machine only: loopback, unprivileged ports. A head node serves its provisioning
# network on the standard ports (TFTP 69, HTTP 80): see the [tftp] and [boot] settings.
export PROVISIONER_TFTP_LISTEN=${PROVISIONER_TFTP_LISTEN:-127.0.0.1}
export PROVISIONER_TFTP_PORT=${PROVISIONER_TFTP_PORT:-6969}
export PROVISIONER_BOOT_LISTEN=${PROVISIONER_BOOT_LISTEN:-127.0.0.1}
export PROVISIONER_BOOT_PORT=${PROVISIONER_BOOT_PORT:-8069}

provisioner group show compute >/dev/null 2>&1 ||
    provisioner group add compute --description "diskless compute nodes" --set console=ttyS0,115200
provisioner node show node001 >/dev/null 2>&1 ||
    provisioner node add 52:54:00:00:00:01 --name node001 --ip 10.10.0.11 --group compute
provisioner node list
provisioner store status
echo
echo "demo: API  http://127.0.0.1:${PROVISIONER_API_PORT:-8080}/api/v1/nodes"
echo "demo: boot http://$PROVISIONER_BOOT_LISTEN:$PROVISIONER_BOOT_PORT/boot/images/NAME/VERSION/FILE"
echo "demo: tftp $PROVISIONER_TFTP_LISTEN port $PROVISIONER_TFTP_PORT, root $PROVISIONER_DATA_DIR/tftp"
exec provisioner serve
