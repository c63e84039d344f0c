"""Small host adapters: disk space of the log's file system."""

from __future__ import annotations

import os
from pathlib import Path


def disk_space(path: Path) -> tuple[int, int, int]:
    """(total, free, available to unprivileged users) bytes of the file system holding path."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize
