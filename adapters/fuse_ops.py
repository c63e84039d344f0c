"""The pyfuse3 adapter: a thin translator from FUSE requests to the file-system service.

No policy lives here: each handler converts arguments, calls one service method, converts the
result, and turns ``FsError`` into ``FUSEError``. Unexpected exceptions are logged and answered
with EIO (pyfuse3 would otherwise stop the whole file system).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from adapters.fuse_locks import LockOps
from application.filesystem import Attr, FileSystemService, SetAttr
from application.locks import LockService
from application.maintenance import DISK_FULL, disk_full
from application.ports.views import NodeKind
from application.replication import ReplicationService
from application.stats import OperationStats
from application.views import ViewService
from application.views.builtin import default_views
from domain.fs.model import ROOT_INO, FsError

log = logging.getLogger("wasmer_dfs.fuse")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: How long the kernel may cache names and attributes. Every change of a local mount goes
#: through the kernel, so its caches stay right; remote changes invalidate them precisely.
CACHE_TIMEOUT = 300.0


def _translate(fn: F) -> F:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        ops = args[0]
        ops.requests += 1  # background work (compaction) waits for a quiet moment
        code = 0
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except FsError as exc:
            code = exc.errno
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError as exc:
            code = exc.errno
            raise
        except OSError as exc:
            if exc.errno in DISK_FULL:  # the disk under the log: the writer gets ENOSPC
                log.warning("%s: %s", name, exc)
                code = exc.errno
                raise pyfuse3.FUSEError(exc.errno) from None
            log.exception("%s failed", name)
            code = errno.EIO
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", name)
            code = errno.EIO
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            stats: OperationStats = ops.stats
            if stats.listening:
                stats.record(name, time.perf_counter() - start, code, at=time.time(),
                             detail=_detail(args[1:]))  # fmt: skip
            else:
                stats.record(name, time.perf_counter() - start, code)

    return wrapper  # type: ignore[return-value]


def _detail(args: tuple[Any, ...]) -> str:
    """The subject of an operation for the access log: its leading inode / handle and name."""
    parts = []
    for a in args[:2]:
        if isinstance(a, int):
            parts.append(str(a))
        elif isinstance(a, bytes):
            parts.append(os.fsdecode(a))
    return " ".join(parts)


class GroupCommitter:
    """Makes closed files durable in the background, in batches: a close never waits for the
    disk, and one fsync serves every close of the last few milliseconds. (The close itself has
    already sealed its transaction into the log, so a killed mount process loses nothing.)"""

    BATCH_SECONDS = 0.005

    def __init__(self, service: FileSystemService) -> None:
        self._service = service
        self._wake = asyncio.Event()

    def request(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.BATCH_SECONDS)
            self._wake.clear()
            try:
                self._service.sync_all()
            except Exception as exc:
                if disk_full(exc):  # the data stays buffered; written once there is room
                    log.warning("background fsync: %s", exc)
                else:
                    log.exception("background fsync failed")


class FuseOperations(LockOps, pyfuse3.Operations):
    def __init__(
        self,
        service: FileSystemService,
        committer: GroupCommitter | None = None,
        *,
        writeback: bool = False,
        read_only: bool = False,
        remote: ReplicationService | None = None,
        locks: LockService | None = None,
        stats: OperationStats | None = None,
        views: ViewService | None = None,
    ) -> None:
        super().__init__()
        self.service = service
        #: what the mount has done, counted (application/stats.py; by default the service's)
        self.stats = stats if stats is not None else service.stats
        #: the emulated files (application/views; the built-in ones unless the caller says)
        self.views = views if views is not None else default_views(
            service, self.stats, remote=remote, locks=locks, read_only=read_only,
            server=getattr(remote.connector, "url", None) if remote is not None else None,
        )  # fmt: skip
        self.committer = committer
        self.enable_writeback_cache = writeback
        self.read_only = read_only
        #: a replicated mount: writes follow its recovery mode (docs/adr/0009)
        self.remote = remote
        #: FUSE requests served so far
        self.requests = 0
        self.init_locks(locks)
        #: set once the kernel's INIT has been answered (what it negotiated is then in force)
        self.initialized = asyncio.Event()

    def init(self) -> None:
        # Called while answering INIT; waiters run after the answer was sent.
        self.initialized.set()

    # -- conversions ---------------------------------------------------------------------------
    @staticmethod
    def entry(attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = attr.blksize
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _view_entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry of a view's: rendered on every request, never cached by the kernel."""
        e = self.entry(attr)
        e.entry_timeout = e.attr_timeout = 0
        return e

    def _not_views(self, *inodes: int) -> None:
        """Names and links are not changed inside the views (only files are written)."""
        if any(self.views.owns(i) for i in inodes):
            raise FsError(errno.EACCES)

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)
        if self.remote is not None:
            self.remote.check_writable()

    async def _metadata_done(self) -> None:
        """A metadata change was made: in the recovery modes that say so, wait for the server."""
        if self.remote is not None:
            await self.remote.after_metadata()

    async def _data_done(self) -> None:
        if self.remote is not None:
            await self.remote.after_data()

    def _new_entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel holds a reference to the inode until it forgets it."""
        self.service.remember(attr.ino)
        return self.entry(attr)

    # -- handlers ------------------------------------------------------------------------------
    @_translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if parent_inode == ROOT_INO or self.views.owns(parent_inode):
            attr = self.views.lookup(parent_inode, name)
            if attr is not None:
                return self._view_entry(attr)
        try:
            return self._new_entry(self.service.lookup(parent_inode, name))
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # A negative entry (inode 0) lets the kernel cache "no such name" too; every change of a
        # name goes through the kernel (or, for remote changes, invalidates it precisely).
        negative = pyfuse3.EntryAttributes()
        negative.st_ino = 0
        negative.entry_timeout = CACHE_TIMEOUT
        return negative

    async def forget(self, inode_list: Any) -> None:
        for inode, nlookup in inode_list:
            if self.views.owns(inode):
                continue
            try:
                self.service.forget(inode, nlookup)
            except Exception:  # forget has no reply: never let it stop the file system
                log.exception("forget(%d) failed", inode)

    @_translate
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        if self.views.owns(inode):
            return self._view_entry(self.views.getattr(inode))
        return self.entry(self.service.getattr(inode))

    @_translate
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        if not self.views.owns(inode):
            self._writable()
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if self.views.owns(inode):
            return self._view_entry(self.views.setattr(inode, changes))
        entry = self.entry(self.service.setattr(inode, changes))
        await self._metadata_done()
        return entry

    @_translate
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.service.readlink(inode)

    @_translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        self._not_views(parent_inode)
        self._writable()
        attr = self.service.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid)
        await self._metadata_done()
        return self._new_entry(attr)

    @_translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        self._not_views(parent_inode)
        self._writable()
        attr = self.service.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid)
        await self._metadata_done()
        return self._new_entry(attr)

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._not_views(parent_inode)
        self._writable()
        self.service.unlink(parent_inode, name)
        await self._metadata_done()

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._not_views(parent_inode)
        self._writable()
        self.service.rmdir(parent_inode, name)
        await self._metadata_done()

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        self._not_views(parent_inode)
        self._writable()
        attr = self.service.symlink(parent_inode, name, target, ctx.uid, ctx.gid)
        await self._metadata_done()
        return self._new_entry(attr)

    @_translate
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: Any,
    ) -> None:  # fmt: skip
        self._not_views(parent_inode_old, parent_inode_new)
        self._writable()
        self.service.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        await self._metadata_done()

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._not_views(inode, new_parent_inode)
        self._writable()
        attr = self.service.link(inode, new_parent_inode, new_name)
        await self._metadata_done()
        return self._new_entry(attr)

    @_translate
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if self.views.owns(inode):
            # rendered at open and read with direct I/O (sizes are what was rendered, no stale
            # page cache); a growing file is read as a stream (no seeking, size 0: `tail -f`)
            fh, kind = self.views.open(
                inode, write=bool(flags & (os.O_WRONLY | os.O_RDWR)),
                truncate=bool(flags & os.O_TRUNC),
            )  # fmt: skip
            return pyfuse3.FileInfo(fh=fh, direct_io=True, nonseekable=kind is NodeKind.STREAM)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self._writable()
        # libfuse negotiates atomic_o_trunc: O_TRUNC arrives here instead of as a setattr.
        fh = self.service.open(inode, truncate=bool(flags & os.O_TRUNC))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        if self.views.owns(parent_inode):
            fh, attr = self.views.create(parent_inode, name)
            return pyfuse3.FileInfo(fh=fh, direct_io=True), self._view_entry(attr)
        self._writable()
        fh, attr = self.service.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        await self._metadata_done()
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._new_entry(attr)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if self.views.owns_handle(fh):
            return await self.views.read(fh, off, size)
        data = self.service.read(fh, off, size)
        self.stats.read(len(data))
        return data

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.views.owns_handle(fh):
            return self.views.write(fh, off, buf)
        if self.remote is not None:
            self.remote.check_writable()
        n = self.service.write(fh, off, buf)
        self.stats.written(n)
        return n

    @_translate
    async def flush(self, fh: int) -> None:
        if self.views.owns_handle(fh):
            return self.views.flush(fh)
        self.service.flush(fh)
        await self._data_done()

    @_translate
    async def release(self, fh: int) -> None:
        if self.views.owns_handle(fh):
            return self.views.release(fh)
        await self.release_lock_handle(fh)
        wrote = self.service.release(fh)
        if wrote and self.committer is not None:
            self.committer.request()

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.views.owns_handle(fh):
            return self.views.flush(fh)
        self.service.fsync(fh)
        await self._data_done()

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if self.views.owns(inode):
            raise FsError(errno.ENODATA)
        return self.service.getxattr(inode, name)

    @_translate
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if self.views.owns(inode):
            return []
        return self.service.listxattr(inode, privileged=ctx.uid == 0)

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        # pyfuse3 has checked XATTR_CREATE / XATTR_REPLACE through getxattr already.
        self._not_views(inode)
        self._writable()
        self.service.setxattr(inode, name, value)
        await self._metadata_done()

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._not_views(inode)
        self._writable()
        self.service.removexattr(inode, name)
        await self._metadata_done()

    # The next three exist only in the patched pyfuse3 (pyfuse3.WASMER_DFS_PATCH); an unpatched
    # one never calls them and the kernel falls back (EOPNOTSUPP, whole-file data, read+write).
    @_translate
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        if self.views.owns_handle(fh):
            raise FsError(errno.EOPNOTSUPP)
        self._writable()
        self.service.fallocate(fh, mode, offset, length)

    @_translate
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        if self.views.owns_handle(fh):
            return self.views.lseek(fh, offset, whence)
        if self.enable_writeback_cache:
            # Data may still be dirty in the kernel's page cache, where we cannot see it (the
            # kernel does not write it back before asking): ENOSYS makes the kernel answer
            # from the size instead (the whole file is data), which is never wrong.
            raise FsError(errno.ENOSYS)
        return self.service.lseek(fh, offset, whence)

    @_translate
    async def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int
    ) -> int:
        if self.views.owns_handle(fh_in) or self.views.owns_handle(fh_out):
            raise FsError(errno.EXDEV)  # the caller copies with read and write instead
        self._writable()
        return self.service.copy_range(fh_in, off_in, fh_out, off_out, length, flags)

    @_translate
    async def opendir(self, inode: int, ctx: Any) -> int:
        if self.views.owns(inode):
            return self.views.opendir(inode)
        return self.service.opendir(inode)

    @_translate
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if self.views.owns_handle(fh):
            for name, attr, next_id in self.views.readdir(fh, start_id):
                if not pyfuse3.readdir_reply(token, name, self._view_entry(attr), next_id):
                    break
            return
        shadowed = self.views.top
        for name, attr, next_id in self.service.readdir(fh, start_id):
            if name in shadowed and self.service.view.parent_of(attr.ino) == ROOT_INO:
                continue  # the chain's own /.wasmer-dfs (views' stored data): hidden
            if not pyfuse3.readdir_reply(token, name, self.entry(attr), next_id):
                break
            if next_id > 2:  # readdirplus: the kernel references every entry but "." and ".."
                self.service.remember(attr.ino)

    @_translate
    async def releasedir(self, fh: int) -> None:
        if self.views.owns_handle(fh):
            return self.views.releasedir(fh)
        self.service.releasedir(fh)

    @_translate
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.service.sync_all()

    @_translate
    async def statfs(self, ctx: Any) -> Any:
        s = self.service.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = s.blocks_free
        out.f_bavail = s.blocks_avail
        out.f_files = s.files
        out.f_ffree = s.files_free
        out.f_favail = s.files_free
        out.f_namemax = s.name_max
        return out
