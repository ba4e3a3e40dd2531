#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then boot a QEMU node from the appliance in a private
# network namespace: `provisioner lab up --nodes 1`, which builds the busybox image (the first
# time: fetches the Debian cloud kernel), starts the appliance and the scheduler, PXE-boots the
# node and shows its progress until it is `ready`; then `provisioner lab status`.
# Safe to run again: a lab left by an earlier run is taken down first. Needs root (namespaces).
# Stop it with: .venv/bin/provisioner lab down
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PROVISIONER_DATA_DIR=${PROVISIONER_DATA_DIR:-$PWD/.provisioner}

provisioner lab down
provisioner lab up --nodes "${DEMO_NODES:-1}" --firmware "${DEMO_FIRMWARE:-bios}"
echo
provisioner lab status
echo
# The lab's state (PIDs, logs) is under this data dir: later commands need it too.
lab="PROVISIONER_DATA_DIR=$PROVISIONER_DATA_DIR .venv/bin/provisioner lab"
echo "demo: console   $lab console node001"
echo "demo: inside    ip netns exec provisioner-lab bash   (API, scheduler, nodes at 10.99.0.x)"
echo "demo: stop      $lab down"
