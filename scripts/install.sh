#!/usr/bin/env bash
# Installs everything wasmer-dfs needs on a fresh Debian machine: system packages (FUSE 3 and
# what building pyfuse3 needs), then a virtual environment in .venv with the project and its
# development tools. Idempotent and non-interactive; run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3 and what building pyfuse3 needs; git, sqlite3 and tar for the real-program tests;
# systemd for systemd-analyze (the units' test)
SYSTEM_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv patch git sqlite3 tar tcpdump systemd nats-server jq groff-base)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: system packages: ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  as_root modprobe fuse 2>/dev/null || echo "install: warning: /dev/fuse is missing" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.wasmer-dfs-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "install: Python packages (pyfuse3 builds from source: about a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning >&2 || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -i warning >&2 || true
  # pyfuse3 is not a dependency (the wheel carries our patched build, docs/adr/0021): in this
  # editable install it comes from build_pyfuse3.sh below, which checks it
  .venv/bin/python -c "import trio, pqcrypto, cryptography, msgspec" \
    || { echo "install: the Python packages did not install" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# pyfuse3 with the operations it lacks (locks, fallocate, lseek, copy_file_range): our patch,
# rebuilt only when it changed (docs/adr/0006-pyfuse3-patch.md).
bash scripts/build_pyfuse3.sh .venv

# the worked example of the views (examples/kv-views, docs/views.md), which the mount tests
# turn on with --view kv: no build isolation, no dependencies (nothing is downloaded)
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e examples/kv-views 2>&1 \
  | grep -v -i warning >&2 || true

# mount.fuse.wasmer-dfs (fstab, mount -t fuse.wasmer-dfs) and the systemd units
as_root .venv/bin/wasmer-dfs install-helpers >/dev/null \
  || echo "install: warning: wasmer-dfs install-helpers failed (fstab and systemd units)" >&2
