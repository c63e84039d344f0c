"""Extended attributes: all of an inode's attributes are one event (object
``derive_u64(ino, XATTR_SLOT)`` under the inode's key); removing the last one deletes the object.
The service checks the inode, the disk's room and records the ctime; this room reads and writes
the attributes (the name rules are in domain/fs/model.py). Split out of
application/filesystem.py (issue 13)."""

from __future__ import annotations

import errno
from collections.abc import Callable

from application.fs.codec import encode_struct
from application.session import ChainSession, ObjectKey
from domain.formats import Format
from domain.fs.model import (
    COLL_XATTRS,
    TYPE_XATTRS,
    XATTR_SLOT,
    FsError,
    XattrData,
    check_xattr_name,
    xattr_set,
)
from domain.fs.view import FsView
from domain.hashing import derive_u64


class Xattrs:
    """Reads the view's attributes; writes them through the session."""

    def __init__(
        self,
        session: ChainSession,
        view: FsView,
        fmt: Callable[[], Format],
        okey: Callable[[int], ObjectKey | None],
    ) -> None:
        self.session = session
        self.view = view
        self._fmt = fmt
        self._okey = okey

    def get(self, ino: int, name: bytes) -> bytes:
        """The value of ``name``; ``FsError(ENODATA)`` when unset (or the name's own error)."""
        value = self.view.xattrs.get(ino, {}).get(name)
        if value is None:
            check_xattr_name(name)
            raise FsError(errno.ENODATA)
        return value

    def names(self, ino: int, privileged: bool) -> list[bytes]:
        """Names of the inode's attributes; ``trusted.`` ones only for a privileged caller (as
        ext4 lists them)."""
        names = list(self.view.xattrs.get(ino, ()))
        if not privileged:
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    def set(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        """setxattr(2) with XATTR_CREATE / XATTR_REPLACE ``flags``."""
        self._put(ino, xattr_set(self.view.xattrs.get(ino, {}), name, value, flags))

    def require(self, ino: int, name: bytes) -> None:
        """``FsError(ENODATA)`` unless ``name`` is set (or the name's own error)."""
        if name not in self.view.xattrs.get(ino, {}):
            check_xattr_name(name)
            raise FsError(errno.ENODATA)

    def remove(self, ino: int, name: bytes) -> None:
        current = self.view.xattrs.get(ino, {})
        self._put(ino, {n: v for n, v in current.items() if n != name})

    def _put(self, ino: int, entries: dict[bytes, bytes]) -> None:
        """One event with all of the inode's attributes (none: the object is deleted)."""
        key = derive_u64(ino, XATTR_SLOT)
        if not entries:
            self.session.delete(key, type_name=TYPE_XATTRS, parent=(ino, COLL_XATTRS))
            return
        xa = XattrData(list(entries.items()))
        self.session.write(
            key,
            type_name=TYPE_XATTRS,
            payload=encode_struct(xa, self._fmt()),
            decoded=xa,
            okey=self._okey(ino),
            parent=(ino, COLL_XATTRS),
        )
