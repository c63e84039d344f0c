"""The ``ViewStore`` port's contract (application/ports/views.py), run against the real store
(records as files of the chain's hidden ``/.wasmer-dfs/data``, application/views/store.py)
and its twin (adapters/memory/view_store.py), docs/adr/0017-ports-and-twins.md."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from adapters.clock import FakeClock
from adapters.crypto import PqCrypto
from adapters.memory.log import MemoryRedoLogFactory
from adapters.memory.view_store import MemoryViewStore
from application.mount import MountRequest, MountService
from application.ports.views import ViewStore
from application.session import Formats
from application.views.store import ChainViewStore
from domain.fs.model import FsError


@pytest.fixture(params=["chain", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[ViewStore]:
    if request.param == "memory":
        yield MemoryViewStore()
        return
    service = MountService(MemoryRedoLogFactory(), PqCrypto(), FakeClock())
    mounted = service.open(
        MountRequest(chain="c", passcode=b"pw", formats=Formats(), uid=0, gid=0, kdf=(1, 8, 1))
    )
    try:
        yield ChainViewStore(mounted.fs, "kv")
    finally:
        mounted.close()


def test_put_get_replace_delete(store: ViewStore) -> None:
    assert store.get(("users", "42")) is None
    assert store.names() == [] and store.names(("users",)) == []
    store.put(("users", "42"), b'{"id": 42}')
    store.put(("users", "7"), b"seven")
    assert store.get(("users", "42")) == b'{"id": 42}'
    store.put(("users", "42"), b"shorter")
    assert store.get(("users", "42")) == b"shorter"
    assert store.names() == ["users"]
    assert store.names(("users",)) == ["42", "7"]
    assert store.delete(("users", "7")) is True
    assert store.delete(("users", "7")) is False
    assert store.get(("users", "7")) is None
    assert store.names(("users",)) == ["42"]


def test_empty_records_and_groups_are_not_records(store: ViewStore) -> None:
    store.put(("t", "empty"), b"")
    assert store.get(("t", "empty")) == b""
    assert store.get(("t",)) is None  # a group, not a record
    with pytest.raises(FsError) as e:
        store.put(("t",), b"x")
    assert e.value.errno == errno.EISDIR
    assert store.names(("t", "empty")) == []


@pytest.mark.parametrize("key", [(), ("",), ("a/b",), ("..",), ("a", ".")])
def test_bad_keys_are_einval(store: ViewStore, key: tuple[str, ...]) -> None:
    with pytest.raises(FsError) as e:
        store.put(key, b"x")
    assert e.value.errno == errno.EINVAL


def test_chain_records_are_events_of_the_chain_hidden_in_its_tree() -> None:
    """What the chain store puts is in the chain (a reopen of the log finds it)."""
    logs = MemoryRedoLogFactory()
    service = MountService(logs, PqCrypto(), FakeClock())
    req = MountRequest(chain="c", passcode=b"pw", formats=Formats(), uid=0, gid=0, kdf=(1, 8, 1))
    mounted = service.open(req)
    ChainViewStore(mounted.fs, "kv").put(("users", "1"), b"one")
    mounted.close()
    again = service.open(req)
    try:
        assert ChainViewStore(again.fs, "kv").get(("users", "1")) == b"one"
        assert ChainViewStore(again.fs, "other").names() == []
    finally:
        again.close()
