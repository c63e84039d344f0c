"""The view service (issue 18, application/views/): routing of reserved inode numbers to views,
the hidden top-level directory, sizes, writes and their refusals, containment of a view that
raises, and the built-in views over a real file-system service (the ``rig`` fixture)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import stat

import pytest

from adapters.clock import FakeClock
from application.fs.values import Attr, SetAttr
from application.ports.views import NodeKind, View, ViewNode, ViewPath
from application.stats import OperationStats
from application.views import VIEW_FH_BASE, VIEW_INO_BASE, ViewService
from application.views.builtin import AccessLog, default_views
from domain.fs.model import ROOT_INO, FsError
from tests.unit.conftest import Rig

ROOT = Attr(ROOT_INO, stat.S_IFDIR | 0o755, 2, 1000, 1000, 0, 0, 0, 0, 0, 4096)


class Notes(View):
    """A writable directory of notes; ``broken`` raises on read."""

    name = "notes"

    def __init__(self) -> None:
        self.notes: dict[str, bytes] = {"a.txt": b"alpha\n"}
        self.broken = False

    def node(self, path: ViewPath) -> ViewNode | None:
        if path == ():
            return ViewNode(NodeKind.DIR, writable=True)
        if len(path) == 1 and path[0] in self.notes:
            return ViewNode(NodeKind.FILE, writable=True)
        return None

    def list(self, path: ViewPath) -> list[str]:
        return sorted(self.notes)

    def read(self, path: ViewPath) -> bytes:
        if self.broken:
            raise RuntimeError("the backing table is gone")
        return self.notes[path[0]]

    def write(self, path: ViewPath, data: bytes) -> None:
        if not data.endswith(b"\n"):
            raise FsError(errno.EINVAL, "a note ends with a newline")
        self.notes[path[0]] = data


class Fixed(View):
    name = "fixed"

    def node(self, path: ViewPath) -> ViewNode | None:
        return {(): ViewNode(NodeKind.DIR), ("x",): ViewNode(NodeKind.FILE)}.get(path)

    def list(self, path: ViewPath) -> list[str]:
        return ["x"]

    def read(self, path: ViewPath) -> bytes:
        return b"12345"


def service(*, read_only: bool = False) -> tuple[ViewService, Notes]:
    notes = Notes()
    views: list[tuple[ViewPath, View]] = [
        ((".wasmer-dfs",), Fixed()),
        ((".wasmer-dfs", "notes"), notes),
    ]
    return ViewService(views, FakeClock(), lambda: ROOT, read_only=read_only), notes


def names(vs: ViewService, ino: int) -> list[bytes]:
    fh = vs.opendir(ino)
    try:
        return [n for n, _, _ in vs.readdir(fh, 0)]
    finally:
        vs.releasedir(fh)


def test_reserved_range_and_lookup_from_the_root() -> None:
    vs, _ = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None and top.ino >= VIEW_INO_BASE and stat.S_ISDIR(top.mode)
    assert vs.owns(top.ino) and not vs.owns((1 << 63) - 1) and not vs.owns(ROOT_INO)
    assert vs.lookup(ROOT_INO, b"other") is None  # not ours: the file system answers
    assert vs.lookup(ROOT_INO, b"notes") is None
    assert (top.uid, top.gid) == (1000, 1000)  # owned like the mount's root
    # below a view's directory a missing name is ENOENT, not "ask the file system"
    with pytest.raises(FsError) as e:
        vs.lookup(top.ino, b"nope")
    assert e.value.errno == errno.ENOENT


def test_listing_merges_views_placed_deeper() -> None:
    vs, _ = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    assert names(vs, top.ino) == [b".", b"..", b"x", b"notes"]
    notes = vs.lookup(top.ino, b"notes")
    assert notes is not None and stat.S_IMODE(notes.mode) == 0o755
    assert names(vs, notes.ino) == [b".", b"..", b"a.txt"]


def test_file_size_is_the_rendered_length_and_reads_slice_it() -> None:
    vs, _ = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    x = vs.lookup(top.ino, b"x")
    assert x is not None and x.size == 5 and stat.S_IMODE(x.mode) == 0o444
    fh, kind = vs.open(x.ino, write=False, truncate=False)
    assert fh >= VIEW_FH_BASE and kind is NodeKind.FILE
    assert asyncio.run(vs.read(fh, 1, 3)) == b"234"
    assert asyncio.run(vs.read(fh, 5, 10)) == b""
    vs.release(fh)


def test_writes_refused_where_not_allowed() -> None:
    vs, _ = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    x = vs.lookup(top.ino, b"x")
    assert x is not None
    for call in (
        lambda: vs.open(x.ino, write=True, truncate=False),
        lambda: vs.open(x.ino, write=False, truncate=True),
        lambda: vs.create(top.ino, b"new"),
        lambda: vs.setattr(x.ino, SetAttr(size=0)),
    ):
        with pytest.raises(FsError) as e:
            call()
        assert e.value.errno == errno.EACCES
    with pytest.raises(FsError) as e:
        vs.setattr(x.ino, SetAttr(mode=0o777))
    assert e.value.errno == errno.EPERM


def test_writes_go_to_the_view_at_close_and_it_may_refuse() -> None:
    vs, notes = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    d = vs.lookup(top.ino, b"notes")
    assert d is not None
    fh, attr = vs.create(d.ino, b"b.txt")
    assert vs.write(fh, 0, b"beta\n") == 5
    assert "b.txt" not in notes.notes  # stored once, at close
    vs.flush(fh)
    vs.release(fh)
    assert notes.notes["b.txt"] == b"beta\n"
    b = vs.lookup(d.ino, b"b.txt")
    assert b is not None and b.ino == attr.ino and b.size == 5
    fh, _ = vs.open(b.ino, write=True, truncate=True)
    vs.write(fh, 0, b"no newline")
    with pytest.raises(FsError) as e:
        vs.flush(fh)
    assert e.value.errno == errno.EINVAL
    vs.release(fh)
    assert notes.notes["b.txt"] == b"beta\n"
    with pytest.raises(FsError) as e:
        vs.create(d.ino, b"a.txt")
    assert e.value.errno == errno.EEXIST


def test_a_read_only_mount_refuses_writes_with_erofs() -> None:
    vs, _ = service(read_only=True)
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    d = vs.lookup(top.ino, b"notes")
    assert d is not None
    with pytest.raises(FsError) as e:
        vs.create(d.ino, b"c.txt")
    assert e.value.errno == errno.EROFS


def test_a_view_that_raises_gives_eio_and_is_named_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vs, notes = service()
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    d = vs.lookup(top.ino, b"notes")
    assert d is not None
    notes.broken = True
    with caplog.at_level(logging.ERROR, "wasmer_dfs.views"), pytest.raises(FsError) as e:
        vs.lookup(d.ino, b"a.txt")
    assert e.value.errno == errno.EIO
    msg = caplog.records[-1].getMessage()
    assert "'notes'" in msg and "a.txt" in msg and "the backing table is gone" in msg
    # the rest keeps working
    x = vs.lookup(top.ino, b"x")
    assert x is not None and x.size == 5
    notes.broken = False
    assert vs.lookup(d.ino, b"a.txt") is not None


def test_bad_places_are_refused() -> None:
    with pytest.raises(ValueError):
        ViewService([(("a/b",), Fixed())], FakeClock(), lambda: ROOT)
    with pytest.raises(ValueError):
        ViewService([(("a",), Fixed()), (("a",), Fixed())], FakeClock(), lambda: ROOT)


# -- the access log ------------------------------------------------------------------------------
def test_access_stream_collects_only_while_open_and_skips_the_views() -> None:
    stats = OperationStats()
    stats.record("getattr", 0.001, at=1.0, detail="5")
    log = AccessLog(stats, frozenset({".wasmer-dfs"}))
    assert not stats.listening
    stream = log.follow()
    stats.record("read", 0.002, at=2.0, detail=f"{VIEW_FH_BASE} 0")  # a read of the views
    stats.record("lookup", 0.001, at=2.0, detail="1 .wasmer-dfs")
    stats.record("lookup", 0.001, errno.ENOENT, at=3.0, detail="1 missing.txt")
    out = asyncio.run(stream.read(65536, 0.01)).decode()
    assert out.count("\n") == 1 and log.produced == len(out)
    assert "lookup (1 missing.txt): ENOENT <0.001000>" in out
    assert asyncio.run(stream.read(65536, 0.01)) == b""  # nothing new: end of file, for now
    stream.close()
    assert not stats.listening  # nothing is collected for nobody


def test_access_stream_wakes_a_waiting_reader() -> None:
    stats = OperationStats()

    async def go() -> bytes:
        stream = AccessLog(stats).follow()
        asyncio.get_running_loop().call_later(
            0.05, lambda: stats.record("mkdir", 0.0, at=0.0, detail="1 d")
        )
        try:
            return await stream.read(4096, 5.0)
        finally:
            stream.close()

    assert b"mkdir (1 d): OK" in asyncio.run(go())


# -- the built-in views over a real file-system service ------------------------------------------
def _read(vs: ViewService, *path: bytes) -> bytes:
    ino = ROOT_INO
    for name in path:
        attr = vs.lookup(ino, name)
        assert attr is not None
        ino = attr.ino
    fh, _ = vs.open(ino, write=False, truncate=False)
    try:
        return asyncio.run(vs.read(fh, 0, 1 << 20))
    finally:
        vs.release(fh)


def test_builtin_views_render_json(rig: Rig) -> None:
    stats = OperationStats()
    stats.record("getattr", 0.0001)
    vs = default_views(rig.fs, stats)
    top = vs.lookup(ROOT_INO, b".wasmer-dfs")
    assert top is not None
    assert names(vs, top.ino) == [
        b".", b"..", b"status", b"stats", b"accesslog", b"locks", b"history",
    ]  # fmt: skip
    status = json.loads(_read(vs, b".wasmer-dfs", b"status"))
    assert status["chain"]["name"] == "local" and status["server"] is None
    assert status["log"]["size"] == rig.fs.session.log.size() > 0
    assert status["pending_uploads"] == 0 and status["connection"] is None
    counted = json.loads(_read(vs, b".wasmer-dfs", b"stats"))
    assert counted["ops"]["getattr"]["calls"] == 1
    assert json.loads(_read(vs, b".wasmer-dfs", b"locks")) == {"distributed": False, "locks": []}
    accesslog = vs.lookup(top.ino, b"accesslog")
    assert accesslog is not None and accesslog.size == 0
    history = vs.lookup(top.ino, b"history")  # application/views/history.py
    assert history is not None and stat.S_ISDIR(history.mode)
