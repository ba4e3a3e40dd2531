#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then boot a QEMU node from the appliance in a private
# network namespace: `provisioner lab up --nodes 1`, which builds the busybox image (the first
# time: fetches the Debian cloud kernel), starts the appliance and the scheduler, PXE-boots the
# node and shows its progress until it is `ready`; then `provisioner lab status`.
# Safe to run again: a lab left by an earlier run is taken down first. Needs root (namespaces).
# The lab lives under ./.provisioner (PROVISIONER_DATA_DIR to choose another data dir); the
# commands printed at the end find it there, and `provisioner status` shows that they do.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PROVISIONER_DATA_DIR=${PROVISIONER_DATA_DIR:-$PWD/.provisioner}
# The lab's own settings decide its store and servers; a settings file named in the caller's
# environment would take precedence over the lab (see `provisioner status`).
unset PROVISIONER_CONFIG

provisioner lab down
provisioner lab up --nodes "${DEMO_NODES:-1}" --firmware "${DEMO_FIRMWARE:-bios}"
echo
provisioner lab status
echo
# While a lab is up under a data dir, every `provisioner` command run with that data dir talks
# to the lab: its store, its appliance and its scheduler (inside the namespace).
cli="PROVISIONER_DATA_DIR=$PROVISIONER_DATA_DIR $PWD/.venv/bin/provisioner"
echo "demo: the lab is up; try (as root, from any directory):"
echo "  $cli status"
echo "  $cli node list"
echo "  $cli scheduler nodes"
[ "${DEMO_NODES:-1}" -eq 0 ] || echo "  $cli lab console node001"
echo "  ip netns exec ${PROVISIONER_LAB_NAMESPACE:-provisioner-lab} bash   # inside: API, scheduler, nodes at 10.99.0.x"
echo "  $cli lab down"
