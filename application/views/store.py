"""A view's stored data in the chain (the ``ViewStore`` port, docs/adr/0019-views.md).

``ChainViewStore`` keeps the records of store NAME in a reserved, hidden part of the chain's
tree, ``/.wasmer-dfs/data/NAME/KEY...``: a key's last name is a file holding the record, the
names before it directories. The records are then events of the chain like any file's: their
inodes and pages are encrypted under their object keys, signed, sealed in transactions,
uploaded to the chain server, streamed to the other mounts of the chain, and compacted (a
record replaced or deleted is garbage). No new kind of event is needed, so the trust rules of
the chain (domain/trust.py, ADR 0015) are unchanged.

The place is out of reach of the mount's users: ``/.wasmer-dfs`` is the built-in view's
directory, which shadows the chain's directory of that name, and the root's readdir leaves
the chain's one out (adapters/fuse_ops.py), so it is neither listed nor reachable by a path.
Writing a record seals a transaction at once (as the close of a written file does).
"""

from __future__ import annotations

import errno

from application.filesystem import FileSystemService
from application.ports.views import ViewPath, ViewStore, check_key
from application.views.service import VIEWS_DIR
from domain.fs.model import ROOT_INO, FsError

#: the chain directory, below the shadowed ``/.wasmer-dfs``, that holds the stores
DATA_DIR = "data"


class ChainViewStore(ViewStore):
    """The records of store ``name`` as files of the chain's hidden ``/.wasmer-dfs/data/NAME``."""

    def __init__(self, fs: FileSystemService, name: str) -> None:
        check_key((name,))
        self._fs = fs
        self.name = name
        self._base: ViewPath = (VIEWS_DIR, DATA_DIR, name)

    def _dir(self, path: ViewPath, *, create: bool) -> int | None:
        """The inode of directory ``path`` (from the root), made when ``create``; else None
        when it is not there."""
        fs = self._fs
        ino = ROOT_INO
        for name in path:
            try:
                ino = fs.lookup(ino, name.encode("utf-8", "surrogateescape")).ino
            except FsError as exc:
                if exc.errno != errno.ENOENT or not create:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not create:
                        return None
                    raise
                root = fs.getattr(ROOT_INO)
                ino = fs.mkdir(ino, name.encode("utf-8", "surrogateescape"), 0o700, root.uid,
                               root.gid).ino  # fmt: skip
        return ino

    def _record(self, key: ViewPath) -> tuple[int, int] | None:
        """(directory, inode) of the record at ``key``, or None."""
        parent = self._dir((*self._base, *key[:-1]), create=False)
        if parent is None:
            return None
        try:
            attr = self._fs.lookup(parent, key[-1].encode("utf-8", "surrogateescape"))
        except FsError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        return parent, attr.ino

    def get(self, key: ViewPath) -> bytes | None:
        check_key(key)
        found = self._record(key)
        if found is None:
            return None
        fs = self._fs
        attr = fs.getattr(found[1])
        if not attr.mode & 0o100000:  # a group of records, not a record
            return None
        fh = fs.open(found[1])
        try:
            return fs.read(fh, 0, attr.size)
        finally:
            fs.release(fh)

    def put(self, key: ViewPath, data: bytes) -> None:
        check_key(key)
        fs = self._fs
        parent = self._dir((*self._base, *key[:-1]), create=True)
        assert parent is not None
        leaf = key[-1].encode("utf-8", "surrogateescape")
        try:
            attr = fs.lookup(parent, leaf)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            root = fs.getattr(ROOT_INO)
            fh, _ = fs.create(parent, leaf, 0o600, root.uid, root.gid)
        else:
            if not attr.mode & 0o100000:
                raise FsError(errno.EISDIR, f"{'/'.join(key)} groups records")
            fh = fs.open(attr.ino, truncate=True)
        try:
            if data:
                fs.write(fh, 0, data)
        finally:
            fs.release(fh)  # writes the file out and seals its transaction
        fs.session.commit()  # an empty record: the create alone

    def delete(self, key: ViewPath) -> bool:
        check_key(key)
        found = self._record(key)
        if found is None:
            return False
        self._fs.unlink(found[0], key[-1].encode("utf-8", "surrogateescape"))
        self._fs.session.commit()
        return True

    def names(self, prefix: ViewPath = ()) -> list[str]:
        if prefix:
            check_key(prefix)
        fs = self._fs
        ino = self._dir((*self._base, *prefix), create=False)
        if ino is None:
            return []
        try:
            fh = fs.opendir(ino)
        except FsError as exc:
            if exc.errno == errno.ENOTDIR:
                return []
            raise
        try:
            names = [n for n, _, _ in fs.readdir(fh, 0) if n not in (b".", b"..")]
        finally:
            fs.releasedir(fh)
        return sorted(n.decode("utf-8", "surrogateescape") for n in names)
