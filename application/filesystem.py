"""The file system service: every POSIX operation the FUSE adapter forwards, as events.

State changes are never made directly: each operation writes events through the chain session,
and the ``FsIndexer`` folds them into the ``FsView`` - the same path a replay takes, so a
remount always rebuilds exactly what was there. File writes are buffered per page (so a run of
small writes becomes one page event) and flushed on fsync, close, a memory threshold or a timer.
"""

from __future__ import annotations

import contextlib
import errno
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from application import snapshot
from application.ports import Clock, DataRef
from application.session import ChainIntegrityError, ChainSession, ObjectKey, Rebuildable
from domain.chain import ChainIndex, Located
from domain.events import Chunk, Confidentiality, Parent, Type
from domain.formats import Format, decode, encode
from domain.fs.model import (
    COLL_DENTRIES,
    COLL_INODES,
    COLL_PAGES,
    COLL_XATTRS,
    NAME_MAX,
    ROOT_INO,
    TYPE_DENTRY,
    TYPE_INODE,
    TYPE_PAGE,
    TYPE_XATTRS,
    XATTR_SLOT,
    DentryData,
    FsError,
    IdMap,
    InodeData,
    XattrData,
    check_name,
    check_xattr_name,
    page_span,
    pages_for_size,
    xattr_set,
)
from domain.fs.view import FsView
from domain.hashing import derive_u64

_T = TypeVar("_T")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
COPY_CHUNK = 16 * 1024 * 1024  # the most one copy_file_range call moves (callers loop)


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blksize: int
    blocks: int = 0  # 512-byte units actually stored (holes and sparse tails do not count)


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int


@dataclass(slots=True)
class SetAttr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class FsIndexer:
    """Folds inode, dentry and page events into the view (replay and live alike)."""

    def __init__(self, view: FsView, session: ChainSession) -> None:
        self.view = view
        self.session = session
        self.confs: dict[int, Confidentiality] = {}

    def _payload(self, ev: Located) -> bytes:
        if ev.plaintext is not None:
            return ev.plaintext
        assert isinstance(ev.locator, DataRef)
        return self.session.read_payload(ev.header, ev.locator)

    def on_event(self, index: ChainIndex, ev: Located, change: tuple[str, int] | None) -> None:
        if change is None:
            return
        hdr = ev.header
        typ = hdr.find(Type)
        kind = typ.name if typ is not None else None
        what, key = change
        if what == "delete":
            if kind == TYPE_DENTRY:
                self.view.delete_dentry(key)
            elif kind == TYPE_INODE:
                self.view.delete_inode(key)
                self.confs.pop(key, None)
            elif kind == TYPE_PAGE:
                parent, chunk = hdr.find(Parent), hdr.find(Chunk)
                if parent is not None and chunk is not None:
                    self.view.delete_page(parent.parent, chunk.index)
            elif kind == TYPE_XATTRS:
                parent = hdr.find(Parent)
                if parent is not None:
                    self.view.put_xattrs(parent.parent, {})
            return
        if kind == TYPE_PAGE:
            parent, chunk = hdr.find(Parent), hdr.find(Chunk)
            if parent is not None and chunk is not None:
                self.view.put_page(parent.parent, chunk.index, (ev.locator, hdr.meta_hash))
        elif kind == TYPE_INODE:
            conf = hdr.find(Confidentiality)
            if conf is not None:
                self.confs[key] = conf
            inode = ev.decoded if isinstance(ev.decoded, InodeData) else None
            self.view.put_inode(key, inode or decode_struct(self._payload(ev), InodeData))
        elif kind == TYPE_DENTRY:
            parent = hdr.find(Parent)
            if parent is not None:
                dentry = ev.decoded if isinstance(ev.decoded, DentryData) else None
                dentry = dentry or decode_struct(self._payload(ev), DentryData)
                self.view.put_dentry(key, parent.parent, dentry)
        elif kind == TYPE_XATTRS:
            parent = hdr.find(Parent)
            if parent is not None:
                xa = ev.decoded if isinstance(ev.decoded, XattrData) else None
                xa = xa or decode_struct(self._payload(ev), XattrData)
                self.view.put_xattrs(parent.parent, dict(xa.entries))

    # -- rebuilding and checkpoints (compaction; see application/snapshot.py) ------------------
    def fork(self, session: ChainSession) -> FsIndexer:
        """An empty indexer of a view of its own, reading through ``session``."""
        return FsIndexer(FsView(), session)

    def adopt(self, other: Rebuildable) -> None:
        """Take ``other``'s state in place (the service's reference to the view stays valid)."""
        snapshot.adopt(self, other)

    def export_state(self) -> bytes | None:
        return snapshot.export(self)

    def import_state(self, blob: bytes | memoryview) -> None:
        snapshot.load(self, blob)


def encode_struct(obj: object, fmt: Format) -> bytes:
    """A structured payload: one format byte, then the encoding (self-describing)."""
    return bytes((int(fmt),)) + encode(obj, fmt)


def decode_struct(payload: bytes, tp: type[_T]) -> _T:
    if not payload:
        raise ChainIntegrityError("empty structured payload")
    try:
        return decode(payload[1:], tp, Format(payload[0]))
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChainIntegrityError(f"undecodable {tp.__name__}: {exc}") from None


@dataclass(slots=True)
class _Handle:
    ino: int
    wrote: bool = False


@dataclass(slots=True)
class _DirHandle:
    ino: int
    #: names as listed since the last rewind: ".", "..", then the entries (offset = index + 1)
    names: list[bytes] | None = None


class FileSystemService:
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
        self._okeys: dict[int, ObjectKey] = {}
        self._dirty_pages: dict[int, dict[int, bytearray]] = {}
        self._dirty_bytes = 0
        self._dirty_attr: dict[int, InodeData] = {}
        self._dirty_since: float | None = None
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_pages = max(1, self.PAGE_CACHE_BYTES // self.page_size)
        self._open: dict[int, int] = {}
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._attested_at = float("-inf")
        #: how owners appear and are stored (--uid, --gid, --impersonate-uid); None: as stored
        self.id_map: IdMap | None = None
        #: inode -> references the kernel holds (its lookup count; FUSE only)
        self._refs: dict[int, int] = {}
        #: a replica of a chain on a server: inodes are deleted only by the mount that removed
        #: their last name (``_maybe_reap``)
        self.replicated = False
        self._unlinked_here: set[int] = set()

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
        if not self.session.encrypted:
            return None
        okey = self.session.new_object_key()
        self._okeys[ino] = okey
        return okey

    def _okey(self, ino: int) -> ObjectKey | None:
        if not self.session.encrypted:
            return None
        okey = self._okeys.get(ino)
        if okey is None:
            conf = self.indexer.confs.get(ino)
            if conf is None:
                raise FsError(errno.EIO, f"inode {ino} has no key")
            okey = self._okeys[ino] = self.session.object_key(conf)
        return okey

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
            blocks=self._blocks(ino, data.size) if stat.S_ISREG(data.mode) else 0,
        )

    def _blocks(self, ino: int, size: int) -> int:
        """512-byte blocks of the pages that exist (so ``du`` of a sparse file is small)."""
        stored = self.view.pages.get(ino)
        n = len(stored) if stored else 0
        dirty = self._dirty_pages.get(ino)
        if dirty:
            n += sum(1 for i in dirty if not stored or i not in stored)
        return (min(size, n * self.page_size) + 511) >> 9

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
        self._drop_dirty(ino)
        self._dirty_attr.pop(ino, None)
        for k in [k for k in self._cache if k[0] == ino]:
            del self._cache[k]
        self.session.delete(ino, type_name=TYPE_INODE, parent=(ROOT_INO, COLL_INODES))
        self._okeys.pop(ino, None)

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
            and self._open.get(ino, 0) == 0
            and ino not in self._refs
            and ino != ROOT_INO
            and ino in self.view.inodes
        ):
            self._delete_inode(ino)
            self._unlinked_here.discard(ino)

    # -- kernel references (FUSE lookup counts) --------------------------------------------------
    def remember(self, ino: int) -> None:
        """The kernel took a reference to ``ino`` (an entry reply: lookup, create, mknod,
        mkdir, symlink, link, or a readdirplus entry other than "." and "..")."""
        refs = self._refs
        refs[ino] = refs.get(ino, 0) + 1

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped ``n`` references (FUSE forget). An inode without names lives on
        while the kernel still references it - an open FIFO or socket (opened without asking
        us), the cwd of a process - and is deleted with the last reference."""
        left = self._refs.get(ino, 0) - n
        if left > 0:
            self._refs[ino] = left
            return
        self._refs.pop(ino, None)
        self._maybe_reap(ino)

    # -- queries -------------------------------------------------------------------------------
    def is_open(self, ino: int) -> bool:
        """Open, or referenced by the kernel: an inode without names must live on."""
        return self._open.get(ino, 0) > 0 or ino in self._refs

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

    def rename(self, op: int, oname: bytes, np: int, nname: bytes, flags: int = 0) -> None:
        check_name(nname)
        self._dir(op)
        self._dir(np)
        src = self.view.lookup(op, oname)
        if src is None:
            raise FsError(errno.ENOENT)
        dst = self.view.lookup(np, nname)
        sdata = self.inode(src.inode)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE and dst is None:
            raise FsError(errno.ENOENT)
        if sdata.is_dir:
            p: int | None = np
            while p is not None:
                if p == src.inode:
                    raise FsError(errno.EINVAL, "cannot move a directory into itself")
                p = self.view.parent_of(p) if p != ROOT_INO else None
        self._room()
        now = self.clock.now_ns()
        if dst is not None and flags & RENAME_EXCHANGE:
            self._put_dentry(src.dentry, np, nname, src.inode)
            self._put_dentry(dst.dentry, op, oname, dst.inode)
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
                self._delete_dentry(dst.dentry, np)
                self._maybe_reap(dst.inode, unlinked_here=True)
                if dst.inode in self.view.inodes:  # still linked elsewhere, or open
                    self._touch(dst.inode, _replace(self.inode(dst.inode), ctime_ns=now))
            self._put_dentry(src.dentry, np, nname, src.inode)
        if dst is not None and flags & RENAME_EXCHANGE:
            self._touch(dst.inode, _replace(self.inode(dst.inode), ctime_ns=now))
        self._touch(src.inode, _replace(self.inode(src.inode), ctime_ns=now))
        self._dir_changed(op, now)
        if np != op:
            self._dir_changed(np, now)

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
            self._truncate(ino, data.size, changes.size)
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
        value = self.view.xattrs.get(ino, {}).get(name)
        if value is None:
            check_xattr_name(name)
            raise FsError(errno.ENODATA)
        return value

    def listxattr(self, ino: int, privileged: bool = True) -> list[bytes]:
        """Names of the inode's attributes; ``trusted.`` ones only for a privileged caller (as
        ext4 lists them)."""
        self.inode(ino)
        names = list(self.view.xattrs.get(ino, ()))
        if not privileged:
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        data = self.inode(ino)
        self._room(len(name) + len(value))
        self._put_xattrs(ino, xattr_set(self.view.xattrs.get(ino, {}), name, value, flags))
        self._touch(ino, _replace(data, ctime_ns=self.clock.now_ns()))

    def removexattr(self, ino: int, name: bytes) -> None:
        data = self.inode(ino)
        current = self.view.xattrs.get(ino, {})
        if name not in current:
            check_xattr_name(name)
            raise FsError(errno.ENODATA)
        self._room(deleting=True)
        self._put_xattrs(ino, {n: v for n, v in current.items() if n != name})
        self._touch(ino, _replace(data, ctime_ns=self.clock.now_ns()))

    def _put_xattrs(self, ino: int, entries: dict[bytes, bytes]) -> None:
        """One event with all of the inode's attributes (none: the object is deleted)."""
        key = derive_u64(ino, XATTR_SLOT)
        if not entries:
            self.session.delete(key, type_name=TYPE_XATTRS, parent=(ino, COLL_XATTRS))
            return
        xa = XattrData(list(entries.items()))
        self.session.write(
            key,
            type_name=TYPE_XATTRS,
            payload=encode_struct(xa, self.fmt),
            decoded=xa,
            okey=self._okey(ino),
            parent=(ino, COLL_XATTRS),
        )

    # -- file contents -------------------------------------------------------------------------
    def _open_handle(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(ino)
        self._open[ino] = self._open.get(ino, 0) + 1
        return fh

    def open(self, ino: int, truncate: bool = False) -> int:
        """Open a file; ``truncate`` is O_TRUNC (the kernel leaves it to us: atomic_o_trunc),
        which empties a regular file and marks its mtime and ctime even when it was empty."""
        data = self.inode(ino)
        fh = self._open_handle(ino)
        if truncate and data.is_reg:
            self.setattr(ino, SetAttr(size=0))
            self._handles[fh].wrote = True
        return fh

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    def _load_page(self, ino: int, idx: int, keep: bool = True) -> bytes:
        dirty = self._dirty_pages.get(ino)
        if dirty is not None and idx in dirty:
            return bytes(dirty[idx])
        cached = self._cache.get((ino, idx))
        if cached is not None:
            self._cache.move_to_end((ino, idx))
            return cached
        pages = self.view.pages.get(ino)
        ref = pages.get(idx) if pages else None
        if ref is None:
            return b""
        loc, meta_hash = ref
        try:
            data = self.session.read_sealed(loc, meta_hash, self._okey(ino))
        except ChainIntegrityError as exc:
            raise FsError(errno.EIO, str(exc)) from None
        if keep:
            self._cache[(ino, idx)] = data
            if len(self._cache) > self._cache_pages:
                self._cache.popitem(last=False)
        return data

    def read_page(self, ino: int, idx: int) -> bytes:
        """One page's plaintext, verified (``FsError(EIO)`` when it fails its checks)."""
        return self._load_page(ino, idx)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        data = self.inode(h.ino)
        end = min(offset + size, data.size)
        if offset >= end:
            return b""
        ps = self.page_size
        parts: list[bytes] = []
        for idx in page_span(offset, end - offset, ps):
            lo = max(offset, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            whole = lo == 0 and idx * ps + hi >= min(data.size, (idx + 1) * ps)
            page = self._load_page(h.ino, idx, keep=not whole)
            chunk = page if lo == 0 and hi == len(page) else page[lo:hi]
            parts.append(chunk)
            if len(chunk) < hi - lo:  # a short page or a hole: zeros
                parts.append(bytes(hi - lo - len(chunk)))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, fh: int, offset: int, buf: bytes) -> int:
        h = self._handle(fh)
        data = self.inode(h.ino)
        if not data.is_reg:
            raise FsError(errno.EINVAL)
        # refused before anything changes: a full disk is reported by the write that meets it
        self._room(self._dirty_bytes + len(buf))
        ps = self.page_size
        dirty = self._dirty_pages.setdefault(h.ino, {})
        end = offset + len(buf)
        for idx in page_span(offset, len(buf), ps):
            page = dirty.get(idx)
            lo = max(offset, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            if page is None:
                whole = lo == 0 and (hi == ps or idx * ps + hi >= data.size)
                page = bytearray() if whole else bytearray(self._load_page(h.ino, idx))
                self._cache.pop((h.ino, idx), None)
                dirty[idx] = page
                self._dirty_bytes += ps
            if len(page) < lo:
                page += bytes(lo - len(page))
            src = idx * ps + lo - offset
            page[lo:hi] = buf[src : src + hi - lo]
        # Set-user-ID and set-group-ID are not cleared here: the kernel does it with a setattr
        # before the write, and only for writers without CAP_FSETID (as on a local disk).
        now = self.clock.now_ns()
        self._touch(h.ino, _replace(data, size=max(data.size, end), mtime_ns=now, ctime_ns=now))
        h.wrote = True
        if self._dirty_bytes > self.DIRTY_LIMIT:
            self.flush_all()
        return len(buf)

    def _truncate(self, ino: int, old: int, new: int) -> None:
        ps = self.page_size
        keep = (new + ps - 1) // ps
        dirty = self._dirty_pages.get(ino, {})
        for idx in [i for i in dirty if i >= keep]:
            del dirty[idx]
        for idx in [i for i in self.view.pages.get(ino, {}) if i >= keep]:
            self._cache.pop((ino, idx), None)
            self.session.delete(
                derive_u64(ino, idx),
                type_name=TYPE_PAGE,
                parent=(ino, COLL_PAGES),
                extra=[Chunk(idx)],
            )
        if new < old and new % ps:
            idx = new // ps
            page = bytearray(self._load_page(ino, idx))[: new % ps]
            self._cache.pop((ino, idx), None)
            self._dirty_pages.setdefault(ino, {})[idx] = page

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
            self._zero_range(h.ino, offset, min(end, data.size), data.size)
        size = data.size if mode & FALLOC_FL_KEEP_SIZE else max(data.size, end)
        now = self.clock.now_ns()
        self._touch(h.ino, _replace(data, size=size, mtime_ns=now, ctime_ns=now))
        h.wrote = True

    def _zero_range(self, ino: int, start: int, end: int, size: int) -> None:
        """Zeros in [start, end) of a file of ``size`` bytes: whole pages become holes."""
        if end <= start:
            return
        ps = self.page_size
        dirty = self._dirty_pages.setdefault(ino, {})
        stored = self.view.pages.get(ino) or {}
        for idx in page_span(start, end - start, ps):
            lo = max(start, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            if lo == 0 and (hi == ps or idx * ps + hi >= size):
                if dirty.pop(idx, None) is not None:
                    self._dirty_bytes -= ps
                self._cache.pop((ino, idx), None)
                if idx in stored:
                    self.session.delete(
                        derive_u64(ino, idx),
                        type_name=TYPE_PAGE,
                        parent=(ino, COLL_PAGES),
                        extra=[Chunk(idx)],
                    )
                continue
            page = dirty.get(idx)
            if page is None:
                if idx not in stored:
                    continue  # a hole already
                page = bytearray(self._load_page(ino, idx))
                self._cache.pop((ino, idx), None)
                dirty[idx] = page
                self._dirty_bytes += ps
            if lo < len(page):
                top = min(hi, len(page))
                page[lo:top] = bytes(top - lo)
        if not dirty:
            del self._dirty_pages[ino]

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """``lseek(2)`` with SEEK_DATA or SEEK_HOLE, at page granularity: a page that exists is
        data (even if it holds zeros), a missing one is a hole, the end of the file is a hole."""
        h = self._handle(fh)
        data = self.inode(h.ino)
        if whence not in (SEEK_DATA, SEEK_HOLE):
            raise FsError(errno.EINVAL)
        if offset < 0 or offset >= data.size:
            raise FsError(errno.ENXIO)
        ps = self.page_size
        stored = self.view.pages.get(h.ino) or {}
        dirty = self._dirty_pages.get(h.ino) or {}
        idx = offset // ps
        if whence == SEEK_DATA:
            # walk the gap, but never further than there are pages: O(min(gap, pages))
            found = None
            for i in range(
                idx, min(idx + len(stored) + len(dirty) + 1, pages_for_size(data.size, ps))
            ):
                if i in stored or i in dirty:
                    found = i
                    break
            else:
                found = min((i for i in (*stored, *dirty) if i >= idx), default=None)
            if found is None or found * ps >= data.size:
                raise FsError(errno.ENXIO)
            return max(offset, found * ps)
        while idx in stored or idx in dirty:
            idx += 1
        return min(data.size, max(offset, idx * ps))

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

    def _flush_pages(self, ino: int) -> None:
        dirty = self._dirty_pages.get(ino)
        if not dirty:
            self._dirty_pages.pop(ino, None)
            return
        ps = self.page_size
        # A page stays dirty until its event is in the log: when the disk is full, nothing
        # written is lost, and a later flush (once there is room) writes it.
        self._room(len(dirty) * (ps + self.EVENT_OVERHEAD))
        okey = self._okey(ino)
        size = self.inode(ino).size
        for idx in sorted(dirty):
            page = dirty[idx]
            valid = min(ps, max(0, size - idx * ps))
            if len(page) > valid:
                del page[valid:]
            payload = bytes(page)
            self.session.write(
                derive_u64(ino, idx),
                type_name=TYPE_PAGE,
                payload=payload,
                okey=okey,
                parent=(ino, COLL_PAGES),
                extra=[Chunk(idx)],
            )
            del dirty[idx]
            self._dirty_bytes -= ps
        self._dirty_pages.pop(ino, None)

    def _drop_dirty(self, ino: int) -> None:
        dirty = self._dirty_pages.pop(ino, None)
        if dirty:
            self._dirty_bytes -= self.page_size * len(dirty)

    def flush_file(self, ino: int) -> None:
        self._flush_pages(ino)
        data = self._dirty_attr.get(ino)
        if data is not None:
            self._put_inode(ino, data)

    def flush_all(self) -> None:
        for ino in list(self._dirty_pages):
            self._flush_pages(ino)
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
        h = self._handles.pop(fh, None)
        if h is None:
            return False
        n = self._open.get(h.ino, 1) - 1
        if n:
            self._open[h.ino] = n
        else:
            self._open.pop(h.ino, None)
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
            lost = self._dirty_bytes
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
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = _DirHandle(ino)
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Attr, int]]:
        """Entries from offset ``start``: ".", "..", then the names. The names are those of the
        directory when the listing started (offset 0: opendir or rewinddir), so offsets stay
        valid while the directory changes and no name is listed twice or skipped; a name
        removed since is left out, and one replaced since is listed with its current inode."""
        d = self._dirs.get(fh)
        if d is None:
            raise FsError(errno.EBADF)
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
        self._dirs.pop(fh, None)

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
        for k in [k for k in self._cache if k[0] == ino]:
            del self._cache[k]

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
        """Keep another replica's version of regular file ``ino`` beside this replica's, which
        the server orders after it: a new file ``NAME.conflict-TAG`` (or the earlier copy
        ``into``) with their attributes and pages (``pages``), the rest of its contents as this
        replica has them. Returns the copy's inode (None when ``ino`` is no longer a named
        regular file)."""
        data = self.view.inodes.get(ino)
        names = self.names_of(ino)
        if data is None or not data.is_reg or not names:
            return None
        base = theirs if theirs is not None and theirs.is_reg else data
        if into is not None and into in self.view.inodes:
            fh = self.open(into)
            attr = self.getattr(into)
            if theirs is None:
                base = _replace(base, size=attr.size)
        else:
            directory, name = names[0]
            suffix = f".conflict-{tag}".encode()
            copy_name = name[: NAME_MAX - len(suffix)] + suffix
            n = 1
            while self.view.lookup(directory, copy_name) is not None:
                n += 1
                copy_name = name[: NAME_MAX - len(suffix) - 4] + suffix + f"-{n}".encode()
            fh, attr = self.create(directory, copy_name, base.mode, base.uid, base.gid)
        try:
            ps = self.page_size
            for idx in range((base.size + ps - 1) // ps):
                page = pages.get(idx)
                if page is None and idx * ps < data.size:
                    page = self.read_page(ino, idx)
                if page:
                    self.write(fh, idx * ps, page[: max(0, min(ps, base.size - idx * ps))])
            self.setattr(attr.ino, SetAttr(size=base.size))
        finally:
            self.release(fh)
        return attr.ino

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
