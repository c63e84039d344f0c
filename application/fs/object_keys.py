"""The object keys of an encrypted chain's inodes: a new key for a new inode, and the key of an
existing one opened from its inode event's ``Confidentiality`` (kept by the indexer), each
opened once and cached. Every event of an inode (its pages, dentries named in it as a
directory, its xattrs) is sealed under the inode's key (docs/adr/0004). On a chain without
encryption there are no keys: every method returns None. Split out of application/filesystem.py
(issue 13)."""

from __future__ import annotations

import errno

from application.fs.indexer import FsIndexer
from application.session import ChainSession, ObjectKey
from domain.fs.model import FsError


class ObjectKeys:
    """Per-inode object keys, cached; the indexer is read on each miss (a checkpoint's adopt
    replaces its ``confs``)."""

    def __init__(self, session: ChainSession, indexer: FsIndexer) -> None:
        self._session = session
        self._indexer = indexer
        self._keys: dict[int, ObjectKey] = {}

    def new(self, ino: int) -> ObjectKey | None:
        """A fresh key for a new inode ``ino`` (None without encryption)."""
        if not self._session.encrypted:
            return None
        okey = self._session.new_object_key()
        self._keys[ino] = okey
        return okey

    def of(self, ino: int) -> ObjectKey | None:
        """The key of inode ``ino`` (None without encryption); ``FsError(EIO)`` when the chain
        holds none for it."""
        if not self._session.encrypted:
            return None
        okey = self._keys.get(ino)
        if okey is None:
            conf = self._indexer.confs.get(ino)
            if conf is None:
                raise FsError(errno.EIO, f"inode {ino} has no key")
            okey = self._keys[ino] = self._session.object_key(conf)
        return okey

    def drop(self, ino: int) -> None:
        """Forget the key of a deleted inode."""
        self._keys.pop(ino, None)
