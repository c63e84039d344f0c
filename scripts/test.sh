#!/usr/bin/env bash
# Installs everything, then runs every check: layer contracts (import-linter), ruff, mypy
# (strict on domain and application) and the test suite, including the tier that mounts real
# FUSE file systems (needs root and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== import-linter"
lint-imports --no-cache
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy domain application adapters entrypoints
echo "== pytest"
exec pytest -q -p no:cacheprovider --durations=15 "$@"
