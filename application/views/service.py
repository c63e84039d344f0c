"""The view service: routes the mount's requests for emulated files to the views that own them
(issue 18, docs/adr/0019-views.md).

Inode numbers and file handles of views live in a reserved range, the upper half of the 64-bit
space (``VIEW_INO_BASE``, ``VIEW_FH_BASE``): the chain's inode numbers are random 63-bit keys
(``FileSystemService._new_key``: ``random >> 1``, so below 2**63) and its handles count up from
1, so neither can reach it, and "is this a view's?" is one integer comparison (nothing is paid
for views on the requests of real files).

The views' top-level directories (``.wasmer-dfs``) are found by lookup in the root but never
listed by its readdir, so ``ls -a``, ``find``, ``du``, backups and ``rm -rf`` never walk into
them. A name of the chain at the same place is shadowed while the view is on.

Files are rendered whole at open (their size in getattr is the length rendered then), read
with direct I/O, and never cached by the kernel (attributes and names time out at once);
growing files (STREAM) are read as a stream, and their size is what they have produced so far
(``View.stream_size``: ``tail -f`` on a network file system reads only as much as it grew).
A view that raises anything but ``FsError`` is contained: the request gets EIO, the log names
the view, the operation, the path and the reason, and every other request goes on as before.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from application.fs.values import Attr, SetAttr
from application.ports import Clock
from application.ports.views import NodeKind, Stream, View, ViewNode, ViewPath
from domain.fs.model import ROOT_INO, FsError

log = logging.getLogger("wasmer_dfs.views")

#: the first inode number of the views (every number from here up is a view's)
VIEW_INO_BASE = 1 << 63
#: the first file handle of the views
VIEW_FH_BASE = 1 << 63
#: where views go when nothing else is said: ``/.wasmer-dfs/NAME``
VIEWS_DIR = ".wasmer-dfs"
#: how long a read of a growing file waits for news before it answers "end of file, for now"
STREAM_WAIT = 1.0
BLOCK = 4096

T = TypeVar("T")


@dataclass(slots=True)
class _Handle:
    path: ViewPath
    kind: NodeKind
    #: a FILE: its content (rendered at open, or being written)
    data: bytearray = field(default_factory=bytearray)
    stream: Stream | None = None
    writing: bool = False
    #: written since the last store (``flush``)
    dirty: bool = False
    #: data came through ``write`` (a handle that only created or truncated the file is stored
    #: at its release: a close of a duplicate before the first write must not store nothing)
    wrote: bool = False


class ViewService:
    """The views of one mount, each at its directory (``at``: names from the mount's root)."""

    def __init__(
        self,
        views: Sequence[tuple[ViewPath, View]],
        clock: Clock,
        root: Callable[[], Attr],
        *,
        read_only: bool = False,
    ) -> None:
        for at, view in views:
            if not at or any(not n or "/" in n or n in (".", "..") for n in at):
                raise ValueError(f"view {view.name!r}: bad place {'/'.join(at)!r}")
        self._views = sorted(views, key=lambda v: -len(v[0]))  # the deepest owner first
        if len({at for at, _ in views}) != len(views):
            raise ValueError("two views at one place")
        self.clock = clock
        #: the mount's root directory (its owner owns the views; ".." of a top-level view)
        self.root = root
        self.read_only = read_only
        #: names of the root that lead to views (found by lookup, not listed)
        self.top: dict[bytes, ViewPath] = {at[0].encode(): (at[0],) for at, _ in views}
        self._ino: dict[ViewPath, int] = {}
        self._path: dict[int, ViewPath] = {}
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, tuple[ViewPath, list[str] | None]] = {}
        self._next_fh = VIEW_FH_BASE
        self._started_ns = clock.now_ns()

    # -- which requests are ours -----------------------------------------------------------------
    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= VIEW_INO_BASE

    @staticmethod
    def owns_handle(fh: int) -> bool:
        return fh >= VIEW_FH_BASE

    @property
    def views(self) -> list[tuple[ViewPath, View]]:
        return list(self._views)

    # -- paths and inode numbers -------------------------------------------------------------------
    def _ino_of(self, path: ViewPath) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = self._ino[path] = VIEW_INO_BASE + len(self._ino)
            self._path[ino] = path
        return ino

    def path_of(self, ino: int) -> ViewPath:
        path = self._path.get(ino)
        if path is None:
            raise FsError(errno.ENOENT)
        return path

    def _owner_of(self, path: ViewPath) -> tuple[View, ViewPath] | None:
        for at, view in self._views:
            if path[: len(at)] == at:
                return view, path[len(at) :]
        return None

    def _inner(self, path: ViewPath) -> list[str]:
        """Names below ``path`` that lead to views placed deeper."""
        n = len(path)
        return sorted({at[n] for at, _ in self._views if len(at) > n and at[:n] == path})

    def _call(self, view: View, what: str, path: ViewPath, fn: Callable[[], T]) -> T:
        """``fn()`` with the view's failures contained: FsError passes, the rest is EIO."""
        try:
            return fn()
        except FsError:
            raise
        except Exception as exc:
            self._failed(view, what, path, exc)
            raise FsError(errno.EIO, f"view {view.name} failed") from None

    @staticmethod
    def _failed(view: View, what: str, path: ViewPath, exc: BaseException) -> None:
        log.error(
            "view %r failed to %s %r: %s: %s", view.name, what, "/".join(path),
            type(exc).__name__, exc,
        )  # fmt: skip
        log.debug("view %r: traceback", view.name, exc_info=exc)

    def _node(self, path: ViewPath) -> ViewNode | None:
        owner = self._owner_of(path)
        if owner is not None:
            view, rel = owner
            node = self._call(view, "stat", rel, lambda: view.node(rel))
            if node is not None:
                return node
        if self._inner(path):
            return ViewNode(NodeKind.DIR)
        return None

    def _existing(self, ino: int) -> tuple[ViewPath, ViewNode]:
        path = self.path_of(ino)
        node = self._node(path)
        if node is None:
            if self._being_written(path) is None:
                raise FsError(errno.ENOENT)
            node = ViewNode(NodeKind.FILE, writable=True)  # created, stored at its close
        return path, node

    def _being_written(self, path: ViewPath) -> _Handle | None:
        """A handle writing ``path`` whose content the view has not been given yet."""
        for h in self._handles.values():
            if h.writing and h.dirty and h.path == path:
                return h
        return None

    def _attr(self, path: ViewPath, node: ViewNode) -> Attr:
        root = self.root()
        uid, gid = root.uid, root.gid
        now = self.clock.now_ns()
        size = 0
        if node.kind is NodeKind.DIR:
            mode = stat.S_IFDIR | (0o755 if node.writable else 0o555)
            mtime = self._started_ns
        else:
            mode = stat.S_IFREG | (0o644 if node.writable else 0o444)
            mtime = now  # rendered now
            owner = self._owner_of(path)
            assert owner is not None  # only views have files
            view, rel = owner
            written = self._being_written(path) if node.writable else None
            if written is not None:  # what the writer will store at its close
                size = len(written.data)
            elif node.kind is NodeKind.FILE:
                size = len(self._call(view, "read", rel, lambda: view.read(rel)))
            else:
                size = self._call(view, "stat", rel, lambda: view.stream_size(rel))
        return Attr(
            ino=self._ino_of(path), mode=mode, nlink=2 if node.kind is NodeKind.DIR else 1,
            uid=uid, gid=gid, size=size, atime_ns=now, mtime_ns=mtime, ctime_ns=mtime, rdev=0,
            blksize=BLOCK, blocks=(size + 511) // 512,
        )  # fmt: skip

    # -- names and attributes --------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Attr | None:
        """The entry ``name`` of ``parent`` when it is a view's; None when the request is not
        for the views (the root's other names); ``FsError(ENOENT)`` for a missing view name."""
        path: ViewPath
        if parent == ROOT_INO:
            top = self.top.get(name)
            if top is None:
                return None
            path = top
        elif self.owns(parent):
            path = (*self.path_of(parent), name.decode("utf-8", "surrogateescape"))
        else:
            return None
        node = self._node(path)
        if node is None:
            raise FsError(errno.ENOENT)
        return self._attr(path, node)

    def getattr(self, ino: int) -> Attr:
        return self._attr(*self._existing(ino))

    def setattr(self, ino: int, changes: SetAttr) -> Attr:
        path, node = self._existing(ino)
        if changes.mode is not None or changes.uid is not None or changes.gid is not None:
            raise FsError(errno.EPERM)
        if changes.size is not None:
            self._check_writable(node)
            if node.kind is not NodeKind.FILE:
                raise FsError(errno.EISDIR if node.kind is NodeKind.DIR else errno.EINVAL)
            view, rel = self._view_of(path)
            data = self._call(view, "read", rel, lambda: view.read(rel))
            new = data[: changes.size].ljust(changes.size, b"\0")
            self._call(view, "write", rel, lambda: view.write(rel, new))
        elif not node.writable:  # times: only where a writer may change the file
            raise FsError(errno.EACCES)
        return self._attr(path, node)

    def _view_of(self, path: ViewPath) -> tuple[View, ViewPath]:
        owner = self._owner_of(path)
        if owner is None:
            raise FsError(errno.EACCES)
        return owner

    def _check_writable(self, node: ViewNode) -> None:
        if not node.writable:
            raise FsError(errno.EACCES)
        if self.read_only:
            raise FsError(errno.EROFS)

    # -- directories -------------------------------------------------------------------------------
    def opendir(self, ino: int) -> int:
        path, node = self._existing(ino)
        if node.kind is not NodeKind.DIR:
            raise FsError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = (path, None)
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Attr, int]]:
        """Entries from offset ``start``, as ``FileSystemService.readdir`` gives them."""
        got = self._dirs.get(fh)
        if got is None:
            raise FsError(errno.EBADF)
        path, names = got
        if start == 0 or names is None:
            names = [".", ".."]
            owner = self._owner_of(path)
            if owner is not None:
                view, rel = owner
                if self._call(view, "stat", rel, lambda: view.node(rel)) is not None:
                    names += self._call(view, "list", rel, lambda: view.list(rel))
            names += [n for n in self._inner(path) if n not in names]
            self._dirs[fh] = (path, names)
        for i in range(start, len(names)):
            if i == 0:
                entry = path
            elif i == 1:
                entry = path[:-1]
            else:
                entry = (*path, names[i])
            if not entry:  # ".." of a top-level directory: the mount's root, not ours
                yield b"..", self.root(), i + 1
                continue
            node = self._node(entry)
            if node is None:
                continue
            yield names[i].encode("utf-8", "surrogateescape"), self._attr(entry, node), i + 1

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------------------------------
    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def open(self, ino: int, *, write: bool, truncate: bool) -> tuple[int, NodeKind]:
        """A handle of file ``ino``: a FILE's content is rendered now; a STREAM starts to
        collect what its reader will read. Returns the handle and what it reads."""
        path, node = self._existing(ino)
        if node.kind is NodeKind.DIR:
            raise FsError(errno.EISDIR)
        if write or truncate:
            self._check_writable(node)
        view, rel = self._view_of(path)
        h = _Handle(path, node.kind, writing=write or truncate)
        if node.kind is NodeKind.STREAM:
            h.stream = self._call(view, "follow", rel, lambda: view.follow(rel))
        elif truncate:
            h.dirty = True
        else:
            h.data[:] = self._call(view, "read", rel, lambda: view.read(rel))
        fh = self._new_fh()
        self._handles[fh] = h
        return fh, node.kind

    def create(self, parent: int, name: bytes) -> tuple[int, Attr]:
        """A new file ``name`` in the writable directory ``parent``: stored at its close."""
        path, node = self._existing(parent)
        if node.kind is not NodeKind.DIR:
            raise FsError(errno.ENOTDIR)
        self._check_writable(node)
        child = (*path, name.decode("utf-8", "surrogateescape"))
        if self._node(child) is not None:
            raise FsError(errno.EEXIST)
        fh = self._new_fh()
        self._handles[fh] = _Handle(child, NodeKind.FILE, writing=True, dirty=True)
        root = self.root()
        uid, gid = root.uid, root.gid
        now = self.clock.now_ns()
        attr = Attr(
            ino=self._ino_of(child), mode=stat.S_IFREG | 0o644, nlink=1, uid=uid, gid=gid,
            size=0, atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=0, blksize=BLOCK,
        )  # fmt: skip
        return fh, attr

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.stream is not None:
            view, rel = self._view_of(h.path)
            try:
                return await h.stream.read(size, STREAM_WAIT)
            except FsError:
                raise
            except Exception as exc:
                self._failed(view, "read", rel, exc)
                raise FsError(errno.EIO) from None
        return bytes(h.data[offset : offset + size])

    def write(self, fh: int, offset: int, buf: bytes) -> int:
        h = self._handle(fh)
        if not h.writing:
            raise FsError(errno.EBADF)
        end = offset + len(buf)
        if len(h.data) < offset:
            h.data.extend(bytes(offset - len(h.data)))
        h.data[offset:end] = buf
        h.dirty = h.wrote = True
        return len(buf)

    def flush(self, fh: int) -> None:
        """Store what was written through ``fh`` (its close or fsync): the view may refuse it.
        Before the first write nothing is stored (a shell's ``>`` closes a duplicate of the new
        file before anything is written): an empty file is stored at its release."""
        h = self._handle(fh)
        if h.dirty and h.wrote:
            self._store(h)

    def _store(self, h: _Handle) -> None:
        view, rel = self._view_of(h.path)
        data = bytes(h.data)
        self._call(view, "write", rel, lambda: view.write(rel, data))
        h.dirty = False

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE (the kernel does the others): a file is all data."""
        h = self._handle(fh)
        if h.stream is not None:
            raise FsError(errno.ESPIPE)
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise FsError(errno.EINVAL)
        if offset >= len(h.data):
            raise FsError(errno.ENXIO)
        return offset if whence == os.SEEK_DATA else len(h.data)

    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None and h.dirty and not h.wrote:  # created or truncated only: empty
            self._store(h)
        if h is not None and h.stream is not None:
            view, rel = self._view_of(h.path)
            self._call(view, "close", rel, h.stream.close)
