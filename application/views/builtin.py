"""The built-in views: the mount's own state as files in ``/.wasmer-dfs/`` (issue 18).

* ``status``: JSON of the mount: chain, server, connection, recovery mode, positions, pending
  uploads, log size, last compaction;
* ``stats``: ``OperationStats.snapshot()`` as JSON (operations, errors, latencies, bytes), with
  the replication counters;
* ``accesslog``: a live stream of the operations served while someone reads it, one line each
  (nothing is collected while nobody reads);
* ``locks``: the file locks this mount holds through the chain server (the lock table of the
  chain as this mount sees it).

``history/PATH/``: the versions of the file at PATH, one read-only file per version named by
its time (application/views/history.py, issue 15).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from application.compaction import Compactor
from application.filesystem import FileSystemService
from application.history import Cut
from application.locks import LockService
from application.ports.views import NodeKind, Stream, View, ViewNode, ViewPath
from application.replication import ReplicationService
from application.stats import Access, OperationStats
from application.views.history import HistoryView
from application.views.service import VIEW_FH_BASE, VIEW_INO_BASE, VIEWS_DIR, ViewService
from domain.fs.model import ROOT_INO, FsError
from domain.locks import EOF

#: a reader of the access log who falls behind loses the oldest lines beyond this many bytes
ACCESSLOG_BUFFER = 1 << 20


@dataclass(slots=True)
class MountState:
    """What the built-in views show: the services of one mount (those it has)."""

    fs: FileSystemService
    stats: OperationStats
    remote: ReplicationService | None = None
    locks: LockService | None = None
    #: the chain server's URL (None: a local chain)
    server: str | None = None
    #: the mount's compactor (None: not known to the views, or a read-only mount)
    compactor: Compactor | None = None
    read_only: bool = False
    #: a mount of the past (``--as-of``): where its replay stopped (the history view stops there)
    as_of: Cut | None = None


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


def status(m: MountState) -> dict[str, object]:
    session = m.fs.session
    header = session.header
    log = session.log
    out: dict[str, object] = {
        "chain": {
            "name": header.name,
            "id": header.chain_id.hex(),
            "encrypted": header.encrypted,
            "page_size": header.page_size,
            "configured_for": header.configured_for,
        },
        "read_only": m.read_only,
        "server": m.server,
        "log": {
            "size": log.size(),
            "committed_end": log.committed_end,
            "closed": session.log_closed,
            "head": session.index.head.hex(),
        },
    }
    r = m.remote
    if r is None:
        out["connection"] = None
        out["recovery_mode"] = None
        out["positions"] = {"local_end": log.committed_end}
        out["pending_uploads"] = 0
    else:
        out["connection"] = {
            "connected": r.state.connected,
            "synced": r.state.synced,
            "last_error": r.state.last_error,
        }
        out["recovery_mode"] = str(r.mode)
        out["positions"] = {
            "local_end": log.committed_end,
            "uploaded_upto": r.replica.uploaded_upto,
            "unconfirmed_end": r.replica.unconfirmed_end(),
            "remote_cursor": r.replica.remote_cursor,
        }
        out["pending_uploads"] = r.replica.pending
        out["replication"] = dataclasses.asdict(r.state.stats)
    c = m.compactor
    if c is None:
        out["compaction"] = None
    else:
        last = c.last
        out["compaction"] = {
            "running": c.job is not None,
            "last": dataclasses.asdict(last) if last is not None else None,
        }
    return out


def stats(m: MountState) -> dict[str, object]:
    out = m.stats.snapshot()
    if m.remote is not None:
        out["replication"] = dataclasses.asdict(m.remote.state.stats)
        out["pending_uploads"] = m.remote.replica.pending
    return out


def locks(m: MountState) -> dict[str, object]:
    if m.locks is None:
        return {"distributed": False, "locks": []}
    held = []
    for span in m.locks.held_locks():
        names = m.fs.names_of(span.key) if span.key in m.fs.view.inodes else []
        held.append({
            "inode": span.key,
            "names": [os.fsdecode(n) for _, n in names],
            "type": "flock" if span.flock else "posix",
            "kind": "write" if span.kind == 2 else "read",
            "owner": f"{span.owner:x}",
            "start": span.start,
            "end": None if span.end == EOF else span.end,
        })  # fmt: skip
    return {"distributed": True, "locks": held}


def _ours(access: Access, top: frozenset[str]) -> bool:
    """Whether ``access`` was a request for the views themselves (not shown: a reader of the
    access log would otherwise read about its own reads, without end)."""
    first, _, rest = access.detail.partition(" ")
    if not first.isdigit():
        return False
    n = int(first)
    if n >= VIEW_INO_BASE or n >= VIEW_FH_BASE:
        return True
    return n == 1 and rest in top


def access_line(a: Access) -> str:
    when = time.strftime("%Y.%m.%d %H:%M:%S", time.localtime(a.at))
    micro = int((a.at % 1) * 1_000_000)
    result = "OK" if a.errno == 0 else errno.errorcode.get(a.errno, str(a.errno))
    return f"{when}.{micro:06d} {a.op} ({a.detail}): {result} <{a.seconds:.6f}>\n"


class AccessLog:
    """The access log's tap on the mount's operations: listens only while someone follows it,
    formats each operation once and hands the line to every reader. ``produced`` counts the
    bytes handed out so far: the file's size, which grows while it is followed (`tail -f` on a
    network file system reads as much as the size grew)."""

    def __init__(self, stats: OperationStats, top: frozenset[str] = frozenset()) -> None:
        self.stats = stats
        self.top = top
        self.produced = 0
        self._readers: list[AccessStream] = []
        self._stop: Callable[[], None] | None = None

    def follow(self) -> AccessStream:
        reader = AccessStream(self)
        self._readers.append(reader)
        if self._stop is None:
            self._stop = self.stats.listen(self._on_access)
        return reader

    def _gone(self, reader: AccessStream) -> None:
        if reader in self._readers:
            self._readers.remove(reader)
        if not self._readers and self._stop is not None:
            self._stop()
            self._stop = None

    def _on_access(self, a: Access) -> None:
        if _ours(a, self.top):
            return
        line = access_line(a).encode("utf-8", "surrogateescape")
        self.produced += len(line)
        for reader in self._readers:
            reader.push(line)


class AccessStream(Stream):
    """One reader of the access log: the lines of the operations served since it opened."""

    def __init__(self, log: AccessLog) -> None:
        self._log = log
        self._buf = bytearray()
        self._dropped = 0
        self._news = asyncio.Event()

    def push(self, line: bytes) -> None:
        self._buf += line
        if len(self._buf) > ACCESSLOG_BUFFER:
            cut = self._buf.find(b"\n", len(self._buf) - ACCESSLOG_BUFFER) + 1
            self._dropped += self._buf.count(b"\n", 0, cut)
            del self._buf[:cut]
        self._news.set()

    async def read(self, size: int, wait: float) -> bytes:
        if not self._buf:
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), wait)
            except TimeoutError:
                return b""
        if self._dropped:
            note = f"# {self._dropped} operations not shown (the reader fell behind)\n"
            self._dropped = 0
            self._buf[:0] = note.encode()
        # whole lines when they fit, so that a reader never sees half an operation
        cut = self._buf.rfind(b"\n", 0, size) + 1 if len(self._buf) > size else len(self._buf)
        if cut <= 0:
            cut = min(size, len(self._buf))
        out = bytes(self._buf[:cut])
        del self._buf[:cut]
        return out

    def close(self) -> None:
        self._log._gone(self)
        self._buf.clear()


class SystemView(View):
    """``/.wasmer-dfs``: the mount's own state (see the module docstring)."""

    name = "wasmer-dfs"

    def __init__(self, state: MountState) -> None:
        self.state = state
        self._files: dict[str, Callable[[MountState], dict[str, object]]] = {
            "status": status,
            "stats": stats,
            "locks": locks,
        }
        self.accesslog = AccessLog(state.stats, frozenset({VIEWS_DIR}))

    def node(self, path: ViewPath) -> ViewNode | None:
        if path == ():
            return ViewNode(NodeKind.DIR)
        if len(path) == 1:
            if path[0] in self._files:
                return ViewNode(NodeKind.FILE)
            if path[0] == "accesslog":
                return ViewNode(NodeKind.STREAM)
        return None

    def list(self, path: ViewPath) -> list[str]:
        if path != ():
            raise FsError(errno.ENOTDIR)
        return ["status", "stats", "accesslog", "locks"]

    def read(self, path: ViewPath) -> bytes:
        render = self._files.get(path[0]) if len(path) == 1 else None
        if render is None:
            raise FsError(errno.ENOENT)
        return _json(render(self.state))

    def follow(self, path: ViewPath) -> Stream:
        if path != ("accesslog",):
            raise FsError(errno.EACCES)
        return self.accesslog.follow()

    def stream_size(self, path: ViewPath) -> int:
        return self.accesslog.produced if path == ("accesslog",) else 0


def builtin_views(state: MountState) -> list[tuple[ViewPath, View]]:
    """The views every mount has: ``/.wasmer-dfs`` (``SystemView``) and
    ``/.wasmer-dfs/history`` (``HistoryView``)."""
    history = HistoryView(state.fs, state.as_of)
    return [((VIEWS_DIR,), SystemView(state)), ((VIEWS_DIR, "history"), history)]


def default_views(
    fs: FileSystemService,
    stats: OperationStats,
    *,
    remote: ReplicationService | None = None,
    locks: LockService | None = None,
    server: str | None = None,
    compactor: Compactor | None = None,
    read_only: bool = False,
    extra: Sequence[tuple[ViewPath, View]] = (),
    as_of: Cut | None = None,
) -> ViewService:
    """The views of a mount: the built-in ones (``/.wasmer-dfs``) and ``extra``."""
    state = MountState(fs, stats, remote, locks, server, compactor, read_only, as_of)
    return ViewService(
        [*builtin_views(state), *extra],
        fs.clock,
        lambda: fs.getattr(ROOT_INO),
        read_only=read_only,
    )
