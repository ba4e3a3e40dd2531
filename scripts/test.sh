#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the whole test suite with the static checks:
# ruff, mypy (strict), import-linter (DESIGN.md's layers), then pytest. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff";          ruff check provisioner tests bench
echo "== mypy --strict"; mypy
echo "== import-linter"; lint-imports --no-cache
echo "== pytest";        pytest -q -p no:cacheprovider "$@"
