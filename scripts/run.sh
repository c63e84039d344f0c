#!/usr/bin/env bash
# Installs everything, then mounts a local encrypted file system (log in ~/wasmer/fs) at the
# path it prints and stays in the foreground: unmount with `fusermount3 -u PATH` or Ctrl-C.
# The passcode is asked for (or taken from WASMER_DFS_PASSCODE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MOUNT=${1:-$HOME/wasmer-dfs}
mkdir -p "$MOUNT"
echo "Mounting an encrypted wasmer-dfs file system at: $MOUNT" >&2
exec .venv/bin/wasmer-dfs mount "$MOUNT" "${2:-$HOME/wasmer/fs}"
