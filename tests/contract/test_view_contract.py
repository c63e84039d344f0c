"""The ``View`` port's contract (application/ports/views.py), run against every view the tree
has: the built-in ``SystemView`` over a real file-system service, and the worked example's two
views (examples/kv-views) over the ``ViewStore`` twin (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator

import pytest

from adapters.clock import FakeClock
from adapters.crypto import PqCrypto
from adapters.memory.log import MemoryRedoLogFactory
from adapters.memory.view_store import MemoryViewStore
from application.mount import MountRequest, MountService
from application.ports.views import NodeKind, View, ViewContext, ViewPath
from application.session import Formats
from application.stats import OperationStats
from application.views.builtin import MountState, SystemView
from domain.fs.model import FsError


@pytest.fixture(params=["system", "kv-table", "kv-index"])
def subject(request: pytest.FixtureRequest) -> Iterator[View]:
    if request.param.startswith("kv"):  # the worked example (examples/kv-views), on the twin
        kv = pytest.importorskip("wasmer_dfs_kv", reason="pip install -e examples/kv-views")
        store = MemoryViewStore()
        context = ViewContext(lambda name: store, FakeClock())
        table, index = kv.kv(None, context)
        table.write(("users", "1.json"), b'{"id": 1, "name": "A", "email": "a@example.org"}')
        yield table if request.param == "kv-table" else index
        return
    service = MountService(MemoryRedoLogFactory(), PqCrypto(), FakeClock())
    mounted = service.open(
        MountRequest(chain="c", passcode=b"pw", formats=Formats(), uid=0, gid=0, kdf=(1, 8, 1))
    )
    try:
        yield SystemView(MountState(mounted.fs, OperationStats()))
    finally:
        mounted.close()


def walk(view: View, path: ViewPath = ()) -> Iterator[ViewPath]:
    yield path
    node = view.node(path)
    assert node is not None
    if node.kind is NodeKind.DIR:
        for name in view.list(path):
            assert name and "/" not in name and name not in (".", "..")
            yield from walk(view, (*path, name))


def test_the_root_is_a_directory_and_every_listed_name_exists(subject: View) -> None:
    root = subject.node(())
    assert root is not None and root.kind is NodeKind.DIR
    paths = list(walk(subject))
    assert len(paths) == len(set(paths)) > 1
    assert subject.name


def test_files_render_bytes_and_streams_follow(subject: View) -> None:
    for path in walk(subject):
        node = subject.node(path)
        assert node is not None
        if node.kind is NodeKind.FILE:
            assert isinstance(subject.read(path), bytes)
        elif node.kind is NodeKind.STREAM:
            size = subject.stream_size(path)
            stream = subject.follow(path)
            try:
                assert asyncio.run(stream.read(4096, 0.01)) == b""  # nothing happened yet
            finally:
                stream.close()
            assert subject.stream_size(path) == size


def test_missing_names_are_none_and_read_only_files_refuse_writes(subject: View) -> None:
    assert subject.node(("no such name",)) is None
    for path in walk(subject):
        node = subject.node(path)
        assert node is not None
        if node.kind is not NodeKind.DIR and not node.writable:
            with pytest.raises(FsError) as e:
                subject.write(path, b"x")
            assert e.value.errno == errno.EACCES
