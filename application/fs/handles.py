"""The handle table: the open files and directories of a mount (file handles as FUSE numbers
them) and the references the kernel holds to inodes (its lookup counts). Together they say which
inodes must live on without a name: an open one, or one the kernel still references (an open
FIFO or socket, a process's cwd). Split out of application/filesystem.py (issue 13)."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from domain.fs.model import FsError


@dataclass(slots=True)
class FileHandle:
    ino: int
    #: this handle wrote (its close seals the transaction; a full disk is reported to it)
    wrote: bool = False


@dataclass(slots=True)
class DirHandle:
    ino: int
    #: names as listed since the last rewind: ".", "..", then the entries (offset = index + 1)
    names: list[bytes] | None = None


class HandleTable:
    """Open file and directory handles (one numbering for both), open counts per inode, and the
    kernel's lookup counts."""

    def __init__(self) -> None:
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._open: dict[int, int] = {}
        #: inode -> references the kernel holds (its lookup count; FUSE only)
        self._refs: dict[int, int] = {}
        self._next_fh = 1

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- files ---------------------------------------------------------------------------------
    def open_file(self, ino: int) -> int:
        """A new handle of file ``ino``."""
        fh = self._new_fh()
        self._files[fh] = FileHandle(ino)
        self._open[ino] = self._open.get(ino, 0) + 1
        return fh

    def file(self, fh: int) -> FileHandle:
        """The open file ``fh``; ``FsError(EBADF)`` when there is none."""
        h = self._files.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    def close_file(self, fh: int) -> FileHandle | None:
        """Remove handle ``fh`` (None when it was not open)."""
        h = self._files.pop(fh, None)
        if h is None:
            return None
        n = self._open.get(h.ino, 1) - 1
        if n:
            self._open[h.ino] = n
        else:
            self._open.pop(h.ino, None)
        return h

    def open_count(self, ino: int) -> int:
        return self._open.get(ino, 0)

    # -- directories ---------------------------------------------------------------------------
    def open_dir(self, ino: int) -> int:
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(ino)
        return fh

    def dir(self, fh: int) -> DirHandle:
        """The open directory ``fh``; ``FsError(EBADF)`` when there is none."""
        d = self._dirs.get(fh)
        if d is None:
            raise FsError(errno.EBADF)
        return d

    def close_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- kernel references (FUSE lookup counts) --------------------------------------------------
    def remember(self, ino: int) -> None:
        refs = self._refs
        refs[ino] = refs.get(ino, 0) + 1

    def forget(self, ino: int, n: int) -> bool:
        """Drop ``n`` references; True when the kernel holds none any more."""
        left = self._refs.get(ino, 0) - n
        if left > 0:
            self._refs[ino] = left
            return False
        self._refs.pop(ino, None)
        return True

    def referenced(self, ino: int) -> bool:
        return ino in self._refs

    def is_open(self, ino: int) -> bool:
        """Open, or referenced by the kernel."""
        return self._open.get(ino, 0) > 0 or ino in self._refs
