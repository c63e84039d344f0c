"""A size-capped tmpfs for full-disk tests (``mount -t tmpfs -o size=...``; needs root).

``capped_tmpfs`` mounts one on a fresh directory and always unmounts it, also when the test
fails (lazily, as a last resort, if a process of the test still holds a file on it). The
``small_tmpfs`` fixture in tests/conftest.py wraps it for every tier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 30


def unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not on PATH"
    return None


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f if len(line.split()) > 2)


@dataclass
class Tmpfs:
    """A mounted tmpfs of ``size`` bytes at ``path``."""

    path: Path
    size: int

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def resize(self, size: int) -> None:
        """Grow (or shrink) the file system in place: ``mount -o remount,size=...``."""
        r = _run("mount", "-o", f"remount,size={size}", str(self.path))
        if r.returncode != 0:
            raise RuntimeError(f"remount of {self.path} to {size} bytes failed: {r.stderr}")
        self.size = size

    def fill(self, name: str, leave: int) -> Path:
        """A file ``name`` on the tmpfs that takes all but ``leave`` bytes of the free space."""
        path = self.path / name
        chunk = bytes(1 << 20)
        with open(path, "wb") as f:
            while True:
                room = self.free() - leave
                if room <= 0:
                    break
                try:
                    f.write(chunk[: min(room, len(chunk))])
                    f.flush()
                except OSError:
                    break
        return path


@contextlib.contextmanager
def capped_tmpfs(path: Path, size: int) -> Iterator[Tmpfs]:
    path.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if r.returncode != 0:
        raise RuntimeError(f"mount -t tmpfs on {path} failed: {r.stderr.strip()}")
    try:
        yield Tmpfs(path, size)
    finally:
        if _mounted(path) and _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))  # still busy: detach it now, freed when let go
        assert not _mounted(path), f"the tmpfs at {path} is still mounted"
