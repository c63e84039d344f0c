"""The per-object state is held compactly (issue 17, memory flat with size) and means the same:

* ``ChainIndex.children`` holds a parent's only child as the key itself, a set from the second
  on; whatever the sequence of creations, moves and deletions, ``children_of`` gives exactly
  the objects whose parent it is;
* repeated values (authorisations, type names, a parent's key, the read key's hash of every
  inode's ``Confidentiality``) are one object each after a replay; a checkpointed open holds
  lone children unboxed too, and its state equals the replayed one.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.mount import Mounted, MountService
from domain.chain import ChainIndex, Located
from domain.events import (
    Authorization,
    DataKey,
    Parent,
    ReadInherit,
    Tombstone,
    Type,
    WriteInherit,
    make_header,
)
from domain.formats import Format
from domain.fs.model import ROOT_INO
from tests.fakes import FastCrypto, chain_state
from tests.property.test_chain_props import GID, PW, UID
from tests.property.test_compaction_props import request

ops_st = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete"]), st.integers(2, 12), st.integers(1, 12)
    ),
    max_size=60,
)


def _event(key: int, parent: int | None, tomb: bool = False) -> Located:
    if tomb:
        meta = [Tombstone(key)]
    else:
        meta = [DataKey(key), Type("t"), Authorization(ReadInherit(), WriteInherit())]
        if parent is not None:
            meta.append(Parent(parent, 1))
    return Located(make_header(meta, Format.MPACK, None if tomb else b"x"), None)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st)
def test_children_of_is_exactly_the_objects_naming_the_parent(
    ops: list[tuple[str, int, int]],
) -> None:
    index = ChainIndex(chain_id=b"c" * 32, root_write=WriteInherit())
    index.apply(_event(1, None))
    for what, key, parent in ops:
        if what == "delete":
            index.apply(_event(key, None, tomb=True))
        elif parent in index.objects and parent != key:
            index.apply(_event(key, parent))
    expected: dict[int, set[int]] = {}
    for k, info in index.objects.items():
        if info.parent is not None:
            expected.setdefault(info.parent, set()).add(k)
    got = {p: set(index.children_of(p)) for p in index.children}
    assert {p: s for p, s in got.items() if s} == expected
    for kids in index.children.values():
        assert isinstance(kids, int) or len(kids) >= 2  # a lone child is never a set
    assert set(index.children_of(999)) == set()


def _build(svc: MountService, files: int) -> Mounted:
    m = svc.open(request(PW, _formats()))
    fs = m.fs
    for d in range(3):
        dino = fs.mkdir(ROOT_INO, b"d%d" % d, 0o755, UID, GID).ino
        for i in range(files):
            fh, _ = fs.create(dino, b"f%d" % i, 0o644, UID, GID)
            fs.write(fh, 0, b"y" * 10)
            fs.release(fh)
    return m


def _formats():  # type: ignore[no-untyped-def]
    from application.session import Formats

    return Formats()


def _assert_shared(m: Mounted) -> None:
    index = m.session.index
    auths = {id(o.auth) for o in index.objects.values() if o.type_name != "chain-key"}
    names = {id(o.type_name) for o in index.objects.values() if o.type_name == "inode"}
    assert len(names) == 1
    assert len(auths) <= 2  # the root's own and the one every file inherits
    for o in index.objects.values():
        if o.parent is not None and o.parent in index.objects:
            assert o.parent is index.objects[o.parent].key
    (ix,) = [ix for ix in m.session.pipeline.indexers if hasattr(ix, "confs")]
    assert len({id(c.key_hash) for c in ix.confs.values()}) == 1


def _assert_lone_children_unboxed(m: Mounted) -> None:
    children = m.session.index.children
    lone = [kids for kids in children.values() if isinstance(kids, int)]
    assert len(lone) >= 120  # every file's one page
    assert all(len(kids) >= 2 for kids in children.values() if not isinstance(kids, int))


def test_a_replay_shares_repeated_values_and_a_checkpointed_open_equals_it() -> None:
    logs = MemoryRedoLogFactory()
    svc = MountService(logs, FastCrypto(), FakeClock())
    m = _build(svc, 40)
    m.close()
    replayed = svc.open(dataclasses.replace(request(PW, _formats()), use_checkpoint=False))
    assert not replayed.from_checkpoint
    _assert_shared(replayed)
    _assert_lone_children_unboxed(replayed)
    expected = chain_state(replayed.session, replayed.fs.view)
    replayed.close()
    loaded = svc.open(request(PW, _formats()))
    assert loaded.from_checkpoint
    assert chain_state(loaded.session, loaded.fs.view) == expected
    _assert_lone_children_unboxed(loaded)
    # and it goes on as before: a new file, a deletion
    fh, _attr = loaded.fs.create(ROOT_INO, b"new", 0o644, UID, GID)
    loaded.fs.release(fh)
    loaded.fs.unlink(ROOT_INO, b"new")
    loaded.close()
