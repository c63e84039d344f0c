"""Properties of compaction and checkpoints over any sequence of file-system operations (the
operations, their model and their checks are those of test_chain_props):

* the state before a compaction, after it, after it and a full replay, and after it and a
  checkpointed open are the same - also when operations run while it is being built;
* a truncated log opens to a prefix of its history: after a compaction, any cut after the
  compacted part opens to the state at the last transaction before the cut; a cut inside the
  compacted part still opens to a consistent tree (fsck passes).
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.filesystem import FileSystemService, SetAttr
from application.fsck import fsck
from application.mount import Mounted, MountRequest, MountService
from application.session import Formats
from domain.formats import Format
from domain.fs.model import ROOT_INO
from tests.fakes import FastCrypto, chain_state
from tests.property.test_chain_props import CHAIN, GID, PAGE, PW, UID, fmt_st, ops_st, run_ops
from tests.unit.conftest import tree

KDF = (1, 8, 1)


def request(passcode: bytes | None, formats: Formats, **kw: object) -> MountRequest:
    return MountRequest(CHAIN, passcode, formats, UID, GID, page_size=PAGE, kdf=KDF, **kw)  # type: ignore[arg-type]


def state(m: Mounted) -> dict[str, object]:
    m.fs.flush_all()
    m.session.commit()
    return chain_state(m.session, m.fs.view)


#: operations in a directory of their own, run while a compaction is being built
during_st = st.lists(
    st.tuples(
        st.sampled_from(["new", "rewrite", "truncate", "unlink", "rename", "mkdir"]),
        st.integers(0, 4),
        st.integers(0, 4),
        st.binary(max_size=3 * PAGE),
    ),
    max_size=12,
)


def run_during(fs: FileSystemService, ops: list[tuple[str, int, int, bytes]]) -> None:
    d = fs.mkdir(ROOT_INO, b"during", 0o755, UID, GID).ino
    for kind, i, j, data in ops:
        name, other = b"f%d" % i, b"f%d" % j
        entry = fs.view.lookup(d, name)
        if kind == "new" and entry is None:
            fh, _ = fs.create(d, name, 0o644, UID, GID)
            fs.write(fh, 0, data)
            fs.release(fh)
        elif kind == "mkdir" and entry is None:
            fs.mkdir(d, name, 0o755, UID, GID)
        elif entry is None or fs.inode(entry.inode).is_dir:
            continue
        elif kind == "rewrite":
            fh = fs.open(entry.inode)
            fs.write(fh, j * 7, data)
            fs.release(fh)
        elif kind == "truncate":
            fs.setattr(entry.inode, SetAttr(size=j * 11))
        elif kind == "unlink":
            fs.unlink(d, name)
        elif kind == "rename":
            target = fs.view.lookup(d, other)
            if target is None or not fs.inode(target.inode).is_dir:
                fs.rename(d, name, d, other)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=ops_st,
    during=during_st,
    encrypted=st.booleans(),
    meta_fmt=fmt_st,
    data_fmt=fmt_st,
)
def test_compaction_preserves_the_state(
    before: list[tuple[object, ...]],
    during: list[tuple[str, int, int, bytes]],
    encrypted: bool,
    meta_fmt: Format,
    data_fmt: Format,
) -> None:
    logs, crypto = MemoryRedoLogFactory(), FastCrypto()
    svc = MountService(logs, crypto, FakeClock())
    req = request(PW if encrypted else None, Formats(meta_fmt, data_fmt))
    m = svc.open(req)
    run_ops(m.fs, before)
    assert m.compactor is not None
    job = m.compactor.begin()
    job.build()
    run_during(m.fs, during)  # the file system goes on while the new log is built
    job.catch_up()
    live = state(m)
    live_tree = tree(m.fs)
    result = m.compactor.finish(job)
    event(f"events carried over: {min(result.tail_events, 10)}")
    assert state(m) == live
    assert not fsck(m.fs)
    m.close()
    for use_checkpoint in (False, True):
        again = svc.open(dataclasses.replace(req, use_checkpoint=use_checkpoint))
        assert again.from_checkpoint is use_checkpoint
        assert state(again) == live
        assert tree(again.fs) == live_tree
        again.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_st,
    compact_after=st.integers(0, 40),
    cut=st.floats(0, 1),
    anywhere=st.sampled_from([False, False, False, True]),
)
def test_a_truncated_log_opens_to_a_prefix_of_its_history(
    ops: list[tuple[object, ...]], compact_after: int, cut: float, anywhere: bool
) -> None:
    """The state after every seal is recorded; a log cut anywhere opens to the state at its
    last whole transaction. (A cut inside the compacted part - which a crash cannot make, as
    the new log is complete before it is renamed into place - still opens consistently.)"""
    logs, crypto = MemoryRedoLogFactory(), FastCrypto()
    svc = MountService(logs, crypto, FakeClock())
    req = request(PW, Formats(), use_checkpoint=False)
    m = svc.open(req)
    session = m.session
    history: dict[int, dict[str, object]] = {}
    start = [session.log.committed_end]
    history[start[0]] = chain_state(session, m.fs.view)
    seal = session._append_seal

    def recording_seal(meta: list) -> int:  # type: ignore[type-arg]
        pos = seal(meta)
        history[session.log.committed_end] = chain_state(session, m.fs.view)
        return pos

    session._append_seal = recording_seal  # type: ignore[method-assign]
    compact = compact_after < len(ops)
    if compact:
        run_ops(m.fs, ops[:compact_after])
        assert m.compactor is not None
        m.compactor.compact()
        history.clear()  # positions of the old log mean nothing in the new one
        start[0] = session.log.committed_end
        history[start[0]] = chain_state(session, m.fs.view)
        # (the rest runs from a fresh model: only its effect on the log matters here)
        rest = [op for op in ops[compact_after:] if op[0] in ("write", "truncate", "chmod")]
        run_ops(m.fs, [("create", 0, b"z", 0o644), *rest])
    else:
        run_ops(m.fs, ops)
    m.close()
    raw = bytes(logs.disk(CHAIN))
    at = int(cut * len(raw)) if anywhere else start[0] + int(cut * (len(raw) - start[0]))
    copy = MemoryRedoLogFactory()
    copy.create(CHAIN, logs.read_header(CHAIN)).close()
    copy.disk(CHAIN)[:] = raw[:at]
    before_cut = [e for e in history if e <= at]
    if at >= start[0] and before_cut:
        event("a cut after the compacted part" if compact else "a cut")
        opened = svc.__class__(copy, crypto, FakeClock()).open(
            dataclasses.replace(req, read_only=True)
        )
        assert opened.session.log.committed_end == max(before_cut)
        assert chain_state(opened.session, opened.fs.view) == history[max(before_cut)]
    else:
        event("a cut inside the compacted part" if compact else "a cut before the root")
        try:
            opened = svc.__class__(copy, crypto, FakeClock()).open(req)
        except Exception as exc:  # a cut header, or no chain key yet: refused, cleanly
            assert "header" in str(exc) or "signing key" in str(exc), exc
            return
        assert not fsck(opened.fs)
    opened.close()
