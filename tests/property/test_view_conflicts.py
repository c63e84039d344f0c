"""Concurrent creations of one name on two replicas: the view shows both, and every replica ends
with the same tree whatever order it applied the events in (domain/fs/view.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.fs.model import DentryData
from domain.fs.view import FsView

NAMES = [b"a", b"b", b"c"]

# (dentry key, name, inode) creations, and which of them are deleted again afterwards
creations = st.lists(
    st.tuples(st.integers(1, 2**63), st.sampled_from(NAMES), st.integers(10, 20)),
    min_size=1,
    max_size=8,
    unique_by=lambda c: c[0],
)


def fold(ops: list[tuple[str, int, bytes, int]]) -> dict[bytes, int]:
    view = FsView()
    view.dirs[1] = {}
    for op, key, name, ino in ops:
        if op == "put":
            view.put_dentry(key, 1, DentryData(name, ino))
        else:
            view.delete_dentry(key)
    assert set(view.dentries) == {e.dentry for e in view.dirs[1].values()}
    return {name: e.dentry for name, e in view.dirs[1].items()}


@settings(max_examples=300, deadline=None)
@given(creations, st.data())
def test_any_order_of_concurrent_creations_gives_one_tree(created, data) -> None:
    deleted = data.draw(st.sets(st.sampled_from([c[0] for c in created])))
    ops = [("put", k, n, i) for k, n, i in created]
    ops += [("del", k, b"", 0) for k, _, _ in created if k in deleted]
    # another replica: any interleaving in which each deletion follows its creation
    order = data.draw(st.permutations(ops))
    seen: set[int] = set()
    replayed, later = [], []
    for op in order:
        (replayed if op[0] == "put" or op[1] in seen else later).append(op)
        if op[0] == "put":
            seen.add(op[1])
    replayed += later
    want = fold(ops)
    assert fold(replayed) == want
    # nothing is lost: every live entry is shown, the greatest key of a name holds the name
    live = [c for c in created if c[0] not in deleted]
    assert sorted(want.values()) == sorted(k for k, _, _ in live)
    for name in NAMES:
        keys = [k for k, n, _ in live if n == name]
        if keys:
            assert want[name] == max(keys)
