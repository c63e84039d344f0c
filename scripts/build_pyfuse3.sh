#!/usr/bin/env bash
# Builds pyfuse3 3.5.0 from its PyPI sdist with wasmer-dfs's patch
# (third_party/pyfuse3/pyfuse3-3.5.0-ops.patch: flock/getlk/setlk/fallocate/lseek/
# copy_file_range, see docs/adr/0006-pyfuse3-patch.md) and installs it into a virtual
# environment, replacing whatever pyfuse3 is there.
#
#   bash scripts/build_pyfuse3.sh /path/to/venv        (FORCE=1 to rebuild regardless)
#
# Idempotent: does nothing when the venv's pyfuse3 already carries this exact patch.
# Needs gcc, pkg-config, libfuse3-dev, the Python headers, and `patch` or `git`.
# Non-interactive; any failure stops it with a message and a non-zero exit.
set -euo pipefail

PYFUSE3_VERSION=3.5.0
# sha256 of pyfuse3-3.5.0.tar.gz as published on PyPI.
PYFUSE3_SDIST_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
# Cython that regenerates src/pyfuse3/__init__.c: the release that generated the C file
# shipped in the 3.5.0 sdist.
CYTHON_SPEC=${PYFUSE3_CYTHON_SPEC:-Cython==3.2.4}
# What pyfuse3 3.5.0's build backend (util/build_backend.py) needs besides Cython.
BUILD_DEPS=("setuptools>=78.1.1" "setuptools_scm>=8")

die() { echo "build_pyfuse3: error: $*" >&2; exit 1; }
say() { echo "build_pyfuse3: $*" >&2; }

[ $# -eq 1 ] || die "usage: bash scripts/build_pyfuse3.sh /path/to/venv"
[ -x "$1/bin/python" ] || die "$1/bin/python does not exist: not a virtual environment"
VENV=$(cd "$1" && pwd)
PY="$VENV/bin/python"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATCH_FILE="$ROOT/third_party/pyfuse3/pyfuse3-$PYFUSE3_VERSION-ops.patch"
[ -f "$PATCH_FILE" ] || die "missing $PATCH_FILE"

# The patch's API level (pyfuse3.WASMER_DFS_PATCH) and a digest of its whole text: a change
# to the patch, or a pyfuse3 reinstalled from PyPI behind our back, triggers a rebuild.
MARKER=$(sed -n 's/^+WASMER_DFS_PATCH = \([0-9][0-9]*\)$/\1/p' "$PATCH_FILE" | head -n1)
[ -n "$MARKER" ] || die "$PATCH_FILE does not set WASMER_DFS_PATCH"
DIGEST=$(sha256sum "$PATCH_FILE" | cut -c1-64)
STAMP="$VENV/.pyfuse3-patch.sha256"
VERSION="$PYFUSE3_VERSION+wasmerdfs$MARKER"

installed_ok() {
  "$PY" - "$MARKER" <<'EOF' 2>/dev/null
import sys
import pyfuse3
ok = (getattr(pyfuse3, "WASMER_DFS_PATCH", None) == int(sys.argv[1])
      and all(hasattr(pyfuse3.Operations, m) for m in
              ("flock", "getlk", "setlk", "fallocate", "lseek", "copy_file_range")))
sys.exit(0 if ok else 1)
EOF
}

if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DIGEST" ] && installed_ok; then
  say "pyfuse3 $VERSION (patched) is already installed in $VENV"
  exit 0
fi

start=$SECONDS
for tool in gcc pkg-config; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install gcc pkg-config)"
done
pkg-config --atleast-version=3.2 fuse3 \
  || die "libfuse3 development files are missing (apt-get install libfuse3-dev)"
if command -v patch >/dev/null; then
  apply_patch() { patch -p1 --forward --batch --quiet < "$PATCH_FILE"; }
elif command -v git >/dev/null; then
  apply_patch() { git apply -p1 --whitespace=nowarn "$PATCH_FILE"; }
else
  die "neither patch nor git is installed (apt-get install patch)"
fi

# The sdist: cached in the venv so that a rebuild needs no network.
CACHE="$VENV/.cache/wasmer-dfs"
SDIST="$CACHE/pyfuse3-$PYFUSE3_VERSION.tar.gz"
mkdir -p "$CACHE"
if [ ! -f "$SDIST" ] || [ "$(sha256sum "$SDIST" | cut -c1-64)" != "$PYFUSE3_SDIST_SHA256" ]; then
  say "downloading the pyfuse3 $PYFUSE3_VERSION sdist"
  rm -f "$SDIST"
  "$PY" -m pip download -q --no-deps --no-binary :all: --dest "$CACHE" \
    "pyfuse3==$PYFUSE3_VERSION" >&2 || die "pip download pyfuse3==$PYFUSE3_VERSION failed"
  [ -f "$SDIST" ] || die "pip download did not produce $SDIST"
fi
got=$(sha256sum "$SDIST" | cut -c1-64)
[ "$got" = "$PYFUSE3_SDIST_SHA256" ] || die "$SDIST has sha256 $got, expected $PYFUSE3_SDIST_SHA256"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-pyfuse3.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/pyfuse3-$PYFUSE3_VERSION"
[ -d "$SRC" ] || die "the sdist did not unpack to pyfuse3-$PYFUSE3_VERSION/"

say "applying $(basename "$PATCH_FILE")"
(cd "$SRC" && apply_patch) || die "the patch does not apply to the pyfuse3 $PYFUSE3_VERSION sdist"
# The sdist ships a C file generated from the unpatched sources. setuptools compiles the .pyx
# with Cython when Cython is importable, but would rebuild only by timestamp: remove the stale C
# file so that it can only be regenerated from the patched sources.
rm -f "$SRC/src/pyfuse3/__init__.c"

say "installing build requirements into the venv: $CYTHON_SPEC ${BUILD_DEPS[*]}"
"$PY" -m pip install -q "$CYTHON_SPEC" "${BUILD_DEPS[@]}" >&2 \
  || die "could not install the build requirements"

say "compiling (Cython, then gcc: about 30 s)"
log="$WORK/build.log"
if ! (cd "$SRC" && SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3="$VERSION" \
      "$PY" -m pip install --no-build-isolation --no-deps --force-reinstall --no-cache-dir \
      -v . >"$log" 2>&1); then
  tail -n 60 "$log" >&2
  die "building the patched pyfuse3 failed (last lines of the build log above)"
fi
[ -f "$SRC/src/pyfuse3/__init__.c" ] || die "Cython did not regenerate src/pyfuse3/__init__.c"
# pyfuse3's one runtime dependency (it imports trio at import time); a no-op when present.
"$PY" -m pip install -q "trio>=0.15" >&2 || die "could not install trio"

installed_ok || die "the installed pyfuse3 does not carry the patch (WASMER_DFS_PATCH=$MARKER)"
echo "$DIGEST" > "$STAMP"
say "installed pyfuse3 $VERSION into $VENV in $((SECONDS - start)) s"
