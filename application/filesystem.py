"""The file system service: every POSIX operation the FUSE adapter forwards, as events.

State changes are never made directly: each operation writes events through the chain session,
and the ``FsIndexer`` folds them into the ``FsView`` - the same path a replay takes, so a
remount always rebuilds exactly what was there. File writes are buffered per page (so a run of
small writes becomes one page event) and flushed on fsync, close, a memory threshold or a timer.

``FileSystemService`` keeps the name operations (lookup, create, link, unlink, rename, setattr,
readdir), the inodes' buffered attributes and when to write out and seal; it delegates the rest
to the rooms in application/fs/ (issue 13): the indexer and the codec, the handle table and the
kernel's lookup counts, the page cache and write buffer, xattrs, object keys and conflict
copies. The names once defined here are re-exported, so ``from application.filesystem import
...`` keeps working. The module stays over ~500 lines (about 800, a hundred of them imports,
re-exports and docstrings): it is the one facade the FUSE adapter calls (adapters/fuse_ops.py),
one method per operation, each with the checks and errno order POSIX asks for, and the write-out
policy (flush, release, tick, close) that ties the handle table, the write buffer and the
buffered attributes together; splitting those further would scatter one operation over several
files or have a room reach into the service's state.
"""

from __future__ import annotations

import contextlib
import errno
import stat
from collections.abc import Callable, Iterator

import msgspec

from application.fs import conflicts
from application.fs.codec import decode_struct, encode_struct
from application.fs.handles import FileHandle, HandleTable
from application.fs.indexer import FsIndexer
from application.fs.object_keys import ObjectKeys
from application.fs.pages import PageBuffer
from application.fs.values import (
    COPY_CHUNK,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    SEEK_DATA,
    SEEK_HOLE,
    Attr,
    SetAttr,
    StatFs,
)
from application.fs.xattrs import Xattrs
from application.ports import Clock
from application.session import ChainSession, ObjectKey
from application.stats import OperationStats
from domain.formats import Format
from domain.fs.model import (
    COLL_DENTRIES,
    COLL_INODES,
    NAME_MAX,
    ROOT_INO,
    TYPE_DENTRY,
    TYPE_INODE,
    DentryData,
    FsError,
    IdMap,
    InodeData,
    check_name,
)

__all__ = [
    "COPY_CHUNK",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "SEEK_DATA",
    "SEEK_HOLE",
    "Attr",
    "FileSystemService",
    "FsIndexer",
    "SetAttr",
    "StatFs",
    "decode_struct",
    "encode_struct",
]


class FileSystemService:
    """The file system of one mount, as events through a chain session: every operation the
    FUSE adapter forwards (a method each, raising ``FsError`` with the errno to report), the
    name operations done here, the rest delegated to the rooms of application/fs/. Attribute
    changes are coalesced per inode until the next flush; ``tick`` writes out what waited,
    seals it and signs the chain's head; ``close`` does the same at unmount."""

    DIRTY_LIMIT = 16 * 1024 * 1024  # buffered page bytes before pages are written out
    TX_LIMIT = 64 * 1024 * 1024  # event bytes in one transaction before it is sealed
    #: decrypted pages kept for reads of part of a page and for read-modify-write. A read of a
    #: whole page is not kept: the kernel's page cache holds it from then on.
    PAGE_CACHE_BYTES = 24 * 1024 * 1024
    ATTEST_SECONDS = 1.0  # at most one ML-DSA signature of the chain's head per second
    #: room kept free on the disk under the log (docs/adr/0003, "A full disk"): a change that
    #: adds to the file system is refused with ENOSPC before its first event when less would be
    #: left, so no operation is cut in half by a full disk; deletions may use the reserve
    SPACE_RESERVE = 2 * 1024 * 1024
    #: log bytes of one event besides its payload (frame, metadata, seal), counted generously
    EVENT_OVERHEAD = 1024

    def __init__(
        self,
        session: ChainSession,
        indexer: FsIndexer,
        clock: Clock,
        data_format: Format,
        space: Callable[[], tuple[int, int, int]] | None = None,
    ) -> None:
        self.session = session
        self.view = indexer.view
        self.indexer = indexer
        self.clock = clock
        self.fmt = data_format
        self.page_size = session.header.page_size
        self._space = space
        self._keys = ObjectKeys(session, indexer)
        self._handles = HandleTable()
        self._pages = PageBuffer(
            session,
            self.view,
            self._okey,
            lambda nbytes: self._room(nbytes),
            lambda ino: self.inode(ino).size,
            cache_bytes=self.PAGE_CACHE_BYTES,
            event_overhead=self.EVENT_OVERHEAD,
        )
        self._xattrs = Xattrs(session, self.view, lambda: self.fmt, self._okey)
        self._dirty_attr: dict[int, InodeData] = {}
        self._dirty_since: float | None = None
        self._attested_at = float("-inf")
        #: how owners appear and are stored (--uid, --gid, --impersonate-uid); None: as stored
        self.id_map: IdMap | None = None
        #: a replica of a chain on a server: inodes are deleted only by the mount that removed
        #: their last name (``_maybe_reap``)
        self.replicated = False
        self._unlinked_here: set[int] = set()
        #: what this mount has done, counted: the FUSE adapter records every request here
        #: (application/stats.py), the views and the metrics exporter read it
        self.stats = OperationStats()

    # -- disk space ----------------------------------------------------------------------------
    def _room(self, nbytes: int = 0, *, deleting: bool = False) -> None:
        """``FsError(ENOSPC)`` unless the log's disk has room for ``nbytes`` of payload and a
        few events, and (unless ``deleting``) the reserve besides."""
        free = self.session.log.free_space()
        if free is None:
            return
        need = nbytes + 4 * self.EVENT_OVERHEAD + (0 if deleting else self.SPACE_RESERVE)
        if free < need:
            raise FsError(errno.ENOSPC, "no space left on the disk under the log")

    # -- set-up --------------------------------------------------------------------------------
    def format_if_empty(self, uid: int, gid: int, mode: int = 0o755) -> None:
        if ROOT_INO in self.view.inodes:
            return
        now = self.clock.now_ns()
        root = InodeData(stat.S_IFDIR | mode, uid, gid, 0, now, now, now)
        self._put_inode(ROOT_INO, root, self._new_okey(ROOT_INO))
        self.session.sync()

    def collect_orphans(self) -> int:
        """Delete inodes no directory names (left by a crash while they were open)."""
        orphans = [ino for ino in self.view.inodes if ino != ROOT_INO and self.view.nlink(ino) == 0]
        for ino in orphans:
            self._delete_inode(ino)
        if orphans:
            self.session.sync()
        return len(orphans)

    # -- helpers -------------------------------------------------------------------------------
    def _new_okey(self, ino: int) -> ObjectKey | None:
        return self._keys.new(ino)

    def _okey(self, ino: int) -> ObjectKey | None:
        return self._keys.of(ino)

    def _new_key(self) -> int:
        while True:
            key = (int.from_bytes(self.session.crypto.random(8), "little") >> 1) | 2
            if key not in self.session.index.objects:
                return key

    def inode(self, ino: int) -> InodeData:
        data = self._dirty_attr.get(ino)
        if data is None:
            data = self.view.inodes.get(ino)
            if data is None:
                raise FsError(errno.ENOENT)
        return data

    def _attr(self, ino: int, data: InodeData) -> Attr:
        uid, gid = data.uid, data.gid
        if self.id_map is not None:
            uid, gid = self.id_map.show(uid, gid, self._owner())
        return Attr(
            ino=ino,
            mode=data.mode,
            nlink=self.view.nlink(ino),
            uid=uid,
            gid=gid,
            size=data.size,
            atime_ns=data.atime_ns,
            mtime_ns=data.mtime_ns,
            ctime_ns=data.ctime_ns,
            rdev=data.rdev,
            blksize=self.page_size,
            blocks=self._pages.blocks(ino, data.size) if stat.S_ISREG(data.mode) else 0,
        )

    def _owner(self) -> tuple[int, int]:
        """The stored (uid, gid) of the root directory: the file system's owner (global ids)."""
        root = self.inode(ROOT_INO)
        return root.uid, root.gid

    def _put_inode(self, ino: int, data: InodeData, okey: ObjectKey | None = None) -> None:
        self._dirty_attr.pop(ino, None)
        self.session.write(
            ino,
            type_name=TYPE_INODE,
            payload=encode_struct(data, self.fmt),
            decoded=data,
            okey=okey if okey is not None else self._okey(ino),
            parent=None if ino == ROOT_INO else (ROOT_INO, COLL_INODES),
        )

    def _touch(self, ino: int, data: InodeData) -> None:
        """Record new attributes lazily (coalesced until the next flush)."""
        self._dirty_attr[ino] = data
        if self._dirty_since is None:
            self._dirty_since = self.clock.monotonic()

    def _dir(self, ino: int) -> InodeData:
        data = self.inode(ino)
        if not data.is_dir:
            raise FsError(errno.ENOTDIR)
        return data

    def _dir_changed(self, ino: int, now: int) -> None:
        data = self.inode(ino)
        self._touch(ino, _replace(data, mtime_ns=now, ctime_ns=now))

    def _put_dentry(self, key: int, parent: int, name: bytes, ino: int) -> None:
        dentry = DentryData(name, ino)
        self.session.write(
            key,
            type_name=TYPE_DENTRY,
            payload=encode_struct(dentry, self.fmt),
            decoded=dentry,
            okey=self._okey(parent),
            parent=(parent, COLL_DENTRIES),
        )

    def _delete_dentry(self, key: int, parent: int) -> None:
        self.session.delete(key, type_name=TYPE_DENTRY, parent=(parent, COLL_DENTRIES))

    def _delete_inode(self, ino: int) -> None:
        self._pages.drop(ino)
        self._dirty_attr.pop(ino, None)
        self.session.delete(ino, type_name=TYPE_INODE, parent=(ROOT_INO, COLL_INODES))
        self._keys.drop(ino)

    def _maybe_reap(self, ino: int, *, unlinked_here: bool = False) -> None:
        """Delete an inode that no name, no open handle and no kernel reference keeps.

        On a replica (``replicated``) only the mount that removed the inode's last name deletes
        it: another mount may hold it open, and two mounts deleting it would race."""
        if self.replicated:
            if unlinked_here and self.view.links.get(ino, 0) == 0:
                self._unlinked_here.add(ino)
            elif ino not in self._unlinked_here:
                return
        if (
            self.view.links.get(ino, 0) == 0
            and self._handles.open_count(ino) == 0
            and not self._handles.referenced(ino)
            and ino != ROOT_INO
            and ino in self.view.inodes
        ):
            self._delete_inode(ino)
            self._unlinked_here.discard(ino)

    # -- kernel references (FUSE lookup counts) --------------------------------------------------
    def remember(self, ino: int) -> None:
        """The kernel took a reference to ``ino`` (an entry reply: lookup, create, mknod,
        mkdir, symlink, link, or a readdirplus entry other than "." and "..")."""
        self._handles.remember(ino)

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references (FUSE forget). An inode without names lives on
        while the kernel still references it - an open FIFO or socket (opened without asking
        us), the cwd of a process - and is deleted with the last reference."""
        if self._handles.forget(ino, n):
            self._maybe_reap(ino)

    # -- queries -------------------------------------------------------------------------------
    def is_open(self, ino: int) -> bool:
        """Open, or referenced by the kernel: an inode without names must live on."""
        return self._handles.is_open(ino)

    def getattr(self, ino: int) -> Attr:
        return self._attr(ino, self.inode(ino))

    def lookup(self, parent: int, name: bytes) -> Attr:
        self._dir(parent)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return self.getattr(parent)
        if name == b"..":
            return self.getattr(self.view.parent_of(parent) or ROOT_INO)
        entry = self.view.lookup(parent, name)
        if entry is None:
            raise FsError(errno.ENOENT)
        return self.getattr(entry.inode)

    def readlink(self, ino: int) -> bytes:
        data = self.inode(ino)
        if not data.is_link:
            raise FsError(errno.EINVAL)
        return data.target

    def statfs(self) -> StatFs:
        bsize = self.page_size
        total, free, avail = self._space() if self._space else (1 << 40, 1 << 40, 1 << 40)
        files = len(self.view.inodes)
        return StatFs(
            block_size=bsize,
            blocks=total // bsize,
            blocks_free=free // bsize,
            blocks_avail=avail // bsize,
            files=files + avail // bsize,
            files_free=avail // bsize,
            name_max=255,
        )

    # -- namespace -----------------------------------------------------------------------------
    def _create(self, parent: int, name: bytes, data: InodeData) -> Attr:
        check_name(name)
        self._dir(parent)
        if self.view.lookup(parent, name) is not None:
            raise FsError(errno.EEXIST)
        self._room(len(data.target or b""))
        ino = self._new_key()
        self._put_inode(ino, data, self._new_okey(ino))
        self._put_dentry(self._new_key(), parent, name, ino)
        self._dir_changed(parent, data.ctime_ns)
        return self.getattr(ino)

    def _new_inode(self, parent: int, mode: int, uid: int, gid: int, **kw: object) -> InodeData:
        now = self.clock.now_ns()
        pdata = self.inode(parent)
        if self.id_map is not None:
            owner = self._owner()
            uid, gid = self.id_map.store_uid(uid, owner), self.id_map.store_gid(gid, owner)
        if pdata.mode & stat.S_ISGID:
            gid = pdata.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return InodeData(mode, uid, gid, atime_ns=now, mtime_ns=now, ctime_ns=now, **kw)  # type: ignore[arg-type]

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        return self._create(parent, name, self._new_inode(parent, mode, uid, gid, rdev=rdev))

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        return self._create(parent, name, self._new_inode(parent, mode, uid, gid))

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        mode = stat.S_IFLNK | 0o777
        data = self._new_inode(parent, mode, uid, gid, target=target, size=len(target))
        return self._create(parent, name, data)

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[int, Attr]:
        attr = self.mknod(parent, name, stat.S_IFREG | stat.S_IMODE(mode), 0, uid, gid)
        return self._open_handle(attr.ino), attr

    def link(self, ino: int, parent: int, name: bytes) -> Attr:
        check_name(name)
        self._dir(parent)
        data = self.inode(ino)
        if data.is_dir:
            raise FsError(errno.EPERM)
        if self.view.lookup(parent, name) is not None:
            raise FsError(errno.EEXIST)
        self._room()
        now = self.clock.now_ns()
        self._put_dentry(self._new_key(), parent, name, ino)
        self._touch(ino, _replace(data, ctime_ns=now))
        self._dir_changed(parent, now)
        return self.getattr(ino)

    def unlink(self, parent: int, name: bytes) -> None:
        self._dir(parent)
        entry = self.view.lookup(parent, name)
        if entry is None:
            raise FsError(errno.ENOENT)
        data = self.inode(entry.inode)
        if data.is_dir:
            raise FsError(errno.EISDIR)
        self._room(deleting=True)
        now = self.clock.now_ns()
        self._delete_dentry(entry.dentry, parent)
        self._dir_changed(parent, now)
        self._maybe_reap(entry.inode, unlinked_here=True)
        if entry.inode in self.view.inodes:  # other names, open, or referenced: lives on
            self._touch(entry.inode, _replace(self.inode(entry.inode), ctime_ns=now))

    def rmdir(self, parent: int, name: bytes) -> None:
        self._dir(parent)
        entry = self.view.lookup(parent, name)
        if entry is None:
            raise FsError(errno.ENOENT)
        self._dir(entry.inode)
        if self.view.dirs.get(entry.inode):
            raise FsError(errno.ENOTEMPTY)
        self._room(deleting=True)
        self._delete_dentry(entry.dentry, parent)
        self._dir_changed(parent, self.clock.now_ns())
        self._maybe_reap(entry.inode, unlinked_here=True)

    def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0
    ) -> None:
        check_name(new_name)
        self._dir(old_parent)
        self._dir(new_parent)
        src = self.view.lookup(old_parent, old_name)
        if src is None:
            raise FsError(errno.ENOENT)
        dst = self.view.lookup(new_parent, new_name)
        sdata = self.inode(src.inode)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE and dst is None:
            raise FsError(errno.ENOENT)
        if sdata.is_dir:
            p: int | None = new_parent
            while p is not None:
                if p == src.inode:
                    raise FsError(errno.EINVAL, "cannot move a directory into itself")
                p = self.view.parent_of(p) if p != ROOT_INO else None
        self._room()
        now = self.clock.now_ns()
        if dst is not None and flags & RENAME_EXCHANGE:
            self._put_dentry(src.dentry, new_parent, new_name, src.inode)
            self._put_dentry(dst.dentry, old_parent, old_name, dst.inode)
        else:
            if dst is not None:
                if dst.inode == src.inode:
                    return
                ddata = self.inode(dst.inode)
                if sdata.is_dir and not ddata.is_dir:
                    raise FsError(errno.ENOTDIR)
                if not sdata.is_dir and ddata.is_dir:
                    raise FsError(errno.EISDIR)
                if ddata.is_dir and self.view.dirs.get(dst.inode):
                    raise FsError(errno.ENOTEMPTY)
                self._delete_dentry(dst.dentry, new_parent)
                self._maybe_reap(dst.inode, unlinked_here=True)
                if dst.inode in self.view.inodes:  # still linked elsewhere, or open
                    self._touch(dst.inode, _replace(self.inode(dst.inode), ctime_ns=now))
            self._put_dentry(src.dentry, new_parent, new_name, src.inode)
        if dst is not None and flags & RENAME_EXCHANGE:
            self._touch(dst.inode, _replace(self.inode(dst.inode), ctime_ns=now))
        self._touch(src.inode, _replace(self.inode(src.inode), ctime_ns=now))
        self._dir_changed(old_parent, now)
        if new_parent != old_parent:
            self._dir_changed(new_parent, now)

    # -- attributes ----------------------------------------------------------------------------
    def setattr(self, ino: int, changes: SetAttr) -> Attr:
        data = self.inode(ino)
        self._room(deleting=changes.size is not None and changes.size < data.size)
        now = self.clock.now_ns()
        new = data
        if changes.size is not None and changes.size != data.size:
            if data.is_dir:
                raise FsError(errno.EISDIR)
            if not data.is_reg:
                raise FsError(errno.EINVAL)
            self._pages.truncate(ino, data.size, changes.size)
            new = _replace(new, size=changes.size, mtime_ns=now)
        elif changes.size is not None:
            new = _replace(new, mtime_ns=now)
        if changes.mode is not None:
            new = _replace(new, mode=stat.S_IFMT(data.mode) | stat.S_IMODE(changes.mode))
        if changes.uid is not None or changes.gid is not None:
            uid = changes.uid if changes.uid is not None else data.uid
            gid = changes.gid if changes.gid is not None else data.gid
            if self.id_map is not None:
                owner = self._owner()
                if changes.uid is not None:
                    uid = self.id_map.store_uid(uid, owner)
                if changes.gid is not None:
                    gid = self.id_map.store_gid(gid, owner)
            mode = new.mode
            if not stat.S_ISDIR(mode) and (uid != data.uid or gid != data.gid):
                mode &= ~stat.S_ISUID
                if mode & stat.S_IXGRP:
                    mode &= ~stat.S_ISGID
            new = _replace(new, uid=uid, gid=gid, mode=mode)
        if changes.atime_ns is not None:
            new = _replace(new, atime_ns=changes.atime_ns)
        if changes.mtime_ns is not None:
            new = _replace(new, mtime_ns=changes.mtime_ns)
        new = _replace(new, ctime_ns=now)
        # Coalesced like a write's attribute changes: tar, cp -p and friends set times, mode
        # and owner one call each; one inode event at the next flush records them all.
        self._touch(ino, new)
        return self._attr(ino, new)

    # -- extended attributes -------------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.inode(ino)
        return self._xattrs.get(ino, name)

    def listxattr(self, ino: int, privileged: bool = True) -> list[bytes]:
        """Names of the inode's attributes; ``trusted.`` ones only for a privileged caller (as
        ext4 lists them)."""
        self.inode(ino)
        return self._xattrs.names(ino, privileged)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        data = self.inode(ino)
        self._room(len(name) + len(value))
        self._xattrs.set(ino, name, value, flags)
        self._touch(ino, _replace(data, ctime_ns=self.clock.now_ns()))

    def removexattr(self, ino: int, name: bytes) -> None:
        data = self.inode(ino)
        self._xattrs.require(ino, name)
        self._room(deleting=True)
        self._xattrs.remove(ino, name)
        self._touch(ino, _replace(data, ctime_ns=self.clock.now_ns()))

    # -- file contents -------------------------------------------------------------------------
    def _open_handle(self, ino: int) -> int:
        return self._handles.open_file(ino)

    def open(self, ino: int, truncate: bool = False) -> int:
        """Open a file; ``truncate`` is O_TRUNC (the kernel leaves it to us: atomic_o_trunc),
        which empties a regular file and marks its mtime and ctime even when it was empty."""
        data = self.inode(ino)
        fh = self._open_handle(ino)
        if truncate and data.is_reg:
            self.setattr(ino, SetAttr(size=0))
            self._handles.file(fh).wrote = True
        return fh

    def _handle(self, fh: int) -> FileHandle:
        return self._handles.file(fh)

    def read_page(self, ino: int, idx: int) -> bytes:
        """One page's plaintext, verified (``FsError(EIO)`` when it fails its checks)."""
        return self._pages.load(ino, idx)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        data = self.inode(h.ino)
        return self._pages.read(h.ino, data.size, offset, size)

    def write(self, fh: int, offset: int, buf: bytes) -> int:
        h = self._handle(fh)
        data = self.inode(h.ino)
        if not data.is_reg:
            raise FsError(errno.EINVAL)
        # refused before anything changes: a full disk is reported by the write that meets it
        self._room(self._pages.dirty_bytes + len(buf))
        self._pages.write(h.ino, data.size, offset, buf)
        end = offset + len(buf)
        # Set-user-ID and set-group-ID are not cleared here: the kernel does it with a setattr
        # before the write, and only for writers without CAP_FSETID (as on a local disk).
        now = self.clock.now_ns()
        self._touch(h.ino, _replace(data, size=max(data.size, end), mtime_ns=now, ctime_ns=now))
        h.wrote = True
        if self._pages.dirty_bytes > self.DIRTY_LIMIT:
            self.flush_all()
        return len(buf)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)``: mode 0 and KEEP_SIZE reserve nothing (pages are written when data
        comes; the size grows unless KEEP_SIZE), PUNCH_HOLE (with KEEP_SIZE) and ZERO_RANGE
        turn the range into zeros, dropping the pages it covers whole (holes again)."""
        h = self._handle(fh)
        data = self.inode(h.ino)
        if data.is_dir:
            raise FsError(errno.EISDIR)
        if not data.is_reg:
            raise FsError(errno.ENODEV)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        zeroing = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)
        if mode & ~known or zeroing == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FsError(errno.EOPNOTSUPP)
        if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise FsError(errno.EOPNOTSUPP)
        end = offset + length
        self._room(deleting=bool(zeroing))
        if zeroing:
            self._pages.zero_range(h.ino, offset, min(end, data.size), data.size)
        size = data.size if mode & FALLOC_FL_KEEP_SIZE else max(data.size, end)
        now = self.clock.now_ns()
        self._touch(h.ino, _replace(data, size=size, mtime_ns=now, ctime_ns=now))
        h.wrote = True

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """``lseek(2)`` with SEEK_DATA or SEEK_HOLE, at page granularity: a page that exists is
        data (even if it holds zeros), a missing one is a hole, the end of the file is a hole."""
        h = self._handle(fh)
        data = self.inode(h.ino)
        if whence not in (SEEK_DATA, SEEK_HOLE):
            raise FsError(errno.EINVAL)
        if offset < 0 or offset >= data.size:
            raise FsError(errno.ENXIO)
        return self._pages.seek(h.ino, data.size, offset, whence)

    def copy_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int = 0
    ) -> int:
        """``copy_file_range(2)``: up to ``COPY_CHUNK`` bytes per call (callers loop)."""
        if flags:
            raise FsError(errno.EINVAL)
        data = self.read(fh_in, off_in, min(length, COPY_CHUNK))
        if not data:
            return 0
        return self.write(fh_out, off_out, data)

    def flush_file(self, ino: int) -> None:
        self._pages.flush(ino)
        data = self._dirty_attr.get(ino)
        if data is not None:
            self._put_inode(ino, data)

    def flush_all(self) -> None:
        self._pages.flush_all()
        for ino, data in list(self._dirty_attr.items()):
            if ino in self.view.inodes:
                self._put_inode(ino, data)
        self._dirty_attr.clear()
        self._dirty_since = None
        if self.session.pending_bytes > self.TX_LIMIT:
            self.session.commit()

    def flush(self, fh: int) -> None:
        """close(2): write out the file and, when this handle wrote, seal its transaction into
        the log (a local seal costs microseconds), so a killed mount process loses nothing that
        was closed; the background group commit fsyncs it within milliseconds."""
        h = self._handle(fh)
        try:
            self.flush_file(h.ino)
        except FsError as exc:
            # a full disk: a handle that did not write is not told (the data stays buffered
            # for a later flush, and the handles that wrote it get ENOSPC)
            if exc.errno != errno.ENOSPC or h.wrote:
                raise
        if h.wrote:
            self.session.commit()

    def fsync(self, fh: int) -> None:
        self.flush_file(self._handle(fh).ino)
        self.session.sync()

    def release(self, fh: int) -> bool:
        """Close a handle; True when it wrote (its data should be made durable)."""
        h = self._handles.close_file(fh)
        if h is None:
            return False
        if h.ino in self.view.inodes:
            try:
                self.flush_file(h.ino)  # on a full disk its pages stay dirty for a later flush
            except FsError as exc:
                if exc.errno != errno.ENOSPC or h.wrote:
                    raise
            finally:
                self._maybe_reap(h.ino)
        if h.wrote:
            self.session.commit()
        return h.wrote

    def sync_all(self) -> None:
        """Write out, seal and fsync everything (syncfs, and the background durability)."""
        self.flush_all()
        self.session.sync()

    def tick(self, idle_seconds: float = 1.0) -> bool:
        """Write out and seal what has waited longer than ``idle_seconds``, sign the chain's
        head, and fsync; True when anything was written."""
        now = self.clock.monotonic()
        waiting = [t for t in (self._dirty_since, self.session.pending_since) if t is not None]
        if waiting and now - min(waiting) >= idle_seconds:
            try:
                self.flush_all()
            finally:  # on a full disk, what was written out is sealed all the same
                self.session.commit()
        if self.session.has_pending or not self.session.unattested:
            return False
        if now - self._attested_at < self.ATTEST_SECONDS:
            return False
        self._attested_at = now
        self.session.attest()
        self.session.log.sync()
        return True

    def close(self) -> None:
        """Write out everything, sign the head, fsync (unmount). On a full disk what fits is
        written and made durable, the head stays unsigned (its local seals keep it valid; the
        next mount signs it), and ``FsError(ENOSPC)`` says how much buffered data was lost."""
        try:
            self.flush_all()
        except FsError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            lost = self._pages.dirty_bytes
            with _unless_disk_full():
                self.session.commit()
            self.session.log.sync()
            raise FsError(
                errno.ENOSPC,
                f"the disk under the log is full: about {lost} bytes of buffered writes (never"
                " fsync'd) could not be saved",
            ) from None
        with _unless_disk_full():
            self.session.attest()
        self.session.log.sync()

    # -- directories ---------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        self._dir(ino)
        return self._handles.open_dir(ino)

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Attr, int]]:
        """Entries from offset ``start``: ".", "..", then the names. The names are those of the
        directory when the listing started (offset 0: opendir or rewinddir), so offsets stay
        valid while the directory changes and no name is listed twice or skipped; a name
        removed since is left out, and one replaced since is listed with its current inode."""
        d = self._handles.dir(fh)
        view = self.view
        if d.ino not in view.inodes:  # removed while open: lists nothing, as ext4
            return
        if start == 0 or d.names is None:
            d.names = [b".", b"..", *view.dirs.get(d.ino, ())]
        names = d.names
        entries = view.dirs.get(d.ino) or {}
        for i in range(start, len(names)):
            if i >= 2:
                entry = entries.get(names[i])
                if entry is None:
                    continue
                ino = entry.inode
            elif i == 0:
                ino = d.ino
            else:
                ino = view.parent_of(d.ino) or ROOT_INO
            yield names[i], self.getattr(ino), i + 1

    def releasedir(self, fh: int) -> None:
        self._handles.close_dir(fh)

    # -- repair (application/repair.py) --------------------------------------------------------
    def adopt_orphan(self, ino: int, directory: int, name: bytes) -> None:
        """Give an inode that no directory names (its dentry was lost to damage) a name in
        ``directory``: a repair saves such inodes into ``lost+found`` instead of losing them."""
        check_name(name)
        self._dir(directory)
        self.inode(ino)
        if self.view.links.get(ino, 0) or self.view.lookup(directory, name) is not None:
            raise FsError(errno.EEXIST)
        self._put_dentry(self._new_key(), directory, name, ino)
        self._dir_changed(directory, self.clock.now_ns())

    # -- replication (application/replication.py) and locks ------------------------------------
    def forget_cached(self, ino: int) -> None:
        """Drop the decrypted pages kept of ``ino`` (another replica changed it)."""
        self._pages.forget_cached(ino)

    def names_of(self, ino: int) -> list[tuple[int, bytes]]:
        """Every (directory, name) of ``ino`` (a scan: for rare uses only)."""
        return [(d, n) for d, n, i in self.view.dentries.values() if i == ino]

    def conflict_copy(
        self,
        ino: int,
        theirs: InodeData | None,
        pages: dict[int, bytes],
        tag: str,
        into: int | None = None,
    ) -> int | None:
        """See ``application.fs.conflicts.conflict_copy``."""
        return conflicts.conflict_copy(self, ino, theirs, pages, tag, into)

    def inode_of(self, fh: int) -> int:
        """The inode an open file handle refers to (the object key, the same on every mount)."""
        return self._handle(fh).ino


@contextlib.contextmanager
def _unless_disk_full() -> Iterator[None]:
    """Go on when the block meets a full disk (its failed append was cut by the log)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


def _replace(data: InodeData, **changes: object) -> InodeData:
    return msgspec.structs.replace(data, **changes)
