"""Is the pyfuse3 that would run a mount the wasmer-dfs build (docs/adr/0006-pyfuse3-patch.md)?

The plain pyfuse3 from PyPI (what `pip install .` brings) lacks the lock, fallocate, lseek and
copy_file_range operations, ``LockInfo`` and the asyncio main loop (ADR 0012) that
adapters/fuse_ops.py and adapters/fuse_runner.py are written against; a mount on it fails at
random places once it is running. This module only looks: it mounts nothing and starts nothing,
so the command line asks it first.
"""

from __future__ import annotations

from pathlib import Path

#: ``pyfuse3.WASMER_DFS_PATCH`` of the patch this code is written against
PATCH_LEVEL = 2
#: what the patch adds to ``pyfuse3.Operations`` (and our FuseOperations overrides)
PATCHED_METHODS = (
    "getlk", "setlk", "flock", "fallocate", "lseek", "copy_file_range", "release_locks",
)  # fmt: skip
INSTALL = "bash scripts/install.sh"


class FuseBindingError(Exception):
    """pyfuse3 is missing, or is not the wasmer-dfs build; the message says how to fix it."""


def _fix() -> str:
    root = Path(__file__).resolve().parent.parent
    where = f" (in {root})" if (root / "scripts" / "install.sh").is_file() else ""
    return f"run `{INSTALL}`{where}: it builds pyfuse3 with the patch (docs/adr/0006)"


def check_pyfuse3() -> None:
    """Raise ``FuseBindingError`` unless ``import pyfuse3`` gives the patched build at
    ``PATCH_LEVEL``."""
    try:
        import pyfuse3
    except ImportError as exc:
        raise FuseBindingError(f"pyfuse3 cannot be imported ({exc}); {_fix()}") from None
    where = getattr(pyfuse3, "__file__", None) or "?"
    level = getattr(pyfuse3, "WASMER_DFS_PATCH", None)
    if level is None:
        raise FuseBindingError(
            f"the pyfuse3 at {where} is the plain build, without wasmer-dfs's patch"
            f" (no pyfuse3.WASMER_DFS_PATCH): mounts need the operations and the main loop it"
            f" adds; {_fix()}"
        )
    if level != PATCH_LEVEL:
        raise FuseBindingError(
            f"the pyfuse3 at {where} carries wasmer-dfs's patch at API level {level!r}, this"
            f" wasmer-dfs needs level {PATCH_LEVEL}; {_fix()}"
        )
    operations = getattr(pyfuse3, "Operations", None)
    missing = [m for m in PATCHED_METHODS if not hasattr(operations, m)]
    if not hasattr(pyfuse3, "LockInfo"):
        missing.append("LockInfo")
    if missing:
        raise FuseBindingError(
            f"the pyfuse3 at {where} says API level {level} but lacks {', '.join(missing)}"
            f" (a broken build); {_fix()}"
        )
