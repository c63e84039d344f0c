"""Compaction, checkpoints and repair, driven through the services on the in-memory log (no
kernel). The ``rig`` fixture checks fsck and a full replay after every test."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application import checkpoint
from application.compaction import CompactionError, Compactor
from application.fsck import fsck, verify
from application.mount import Mounted, MountRequest, MountService
from application.repair import Repairer
from application.session import Formats
from domain.chain import Located
from domain.compaction import (
    FACTOR_MIN_LOG,
    CompactMode,
    CompactPolicy,
    Planner,
    compaction_due,
)
from domain.events import (
    Authorization,
    DataKey,
    Parent,
    PublicKey,
    ReadEveryone,
    Tombstone,
    Type,
    WriteSpecific,
    make_header,
    parse_header,
)
from domain.formats import Format
from domain.fs.model import ROOT_INO
from domain.hashing import EMPTY_HASH
from tests.fakes import FastCrypto, chain_state, frames

from .conftest import FAST_KDF, Rig, tree

MiB = 1 << 20


# --- helpers ------------------------------------------------------------------------------------
def write_file(fs, parent: int, name: bytes, data: bytes) -> int:  # type: ignore[no-untyped-def]
    fh, attr = fs.create(parent, name, 0o644, 1000, 1000)
    fs.write(fh, 0, data)
    fs.release(fh)
    return int(attr.ino)


def rewrite(fs, ino: int, data: bytes) -> None:  # type: ignore[no-untyped-def]
    fh = fs.open(ino)
    fs.write(fh, 0, data)
    fs.fsync(fh)
    fs.release(fh)


def busy_tree(rig: Rig) -> None:
    """A tree with history: rewrites, deletions, renames, links, a symlink, a removed dir."""
    fs = rig.fs
    d = fs.mkdir(ROOT_INO, b"dir", 0o755, 1000, 1000).ino
    sub = fs.mkdir(d, b"sub", 0o700, 1000, 1000).ino
    gone = fs.mkdir(ROOT_INO, b"gone", 0o755, 1000, 1000).ino
    write_file(fs, gone, b"x", b"x" * 5000)
    fs.unlink(gone, b"x")
    fs.rmdir(ROOT_INO, b"gone")
    for i in range(6):
        ino = write_file(fs, sub if i % 2 else d, b"f%d" % i, bytes([i]) * (40_000 + i))
        for k in range(3):
            rewrite(fs, ino, bytes([i + k]) * (30_000 + 1000 * k))
    fs.unlink(d, b"f2")
    fs.rename(d, b"f4", ROOT_INO, b"moved")
    fs.link(fs.lookup(sub, b"f1").ino, ROOT_INO, b"hard")
    fs.symlink(d, b"link", b"../moved", 1000, 1000)
    fs.rename(d, b"sub", ROOT_INO, b"sub2")
    fs.sync_all()


def state(m: Mounted) -> dict[str, object]:
    """The materialised state once everything buffered is written (as a close would)."""
    if not m.read_only:
        m.fs.flush_all()
        m.session.commit()
    return chain_state(m.session, m.fs.view)


def typed_frames(raw: bytearray, type_name: str) -> list:  # type: ignore[type-arg]
    out = []
    for f in frames(raw):
        if f.commit:
            continue
        t = parse_header(f.meta, f.fmt, EMPTY_HASH).find(Type)
        if t is not None and t.name == type_name:
            out.append(f)
    return out


def reopen(rig: Rig, *, use_checkpoint: bool = True) -> Mounted:
    rig.mounted.close()
    rig.mounted = rig.service.open(dataclasses.replace(rig.request, use_checkpoint=use_checkpoint))
    return rig.mounted


def compactor(rig: Rig) -> Compactor:
    c = rig.mounted.compactor
    assert c is not None
    return c


# --- the trigger policy (pure) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "size", "base", "since", "modified", "due"),
    [
        (CompactMode.NEVER, 10 * FACTOR_MIN_LOG, 1, 10**6, True, False),
        (CompactMode.MODIFIED, 100, 100, 0, True, True),
        (CompactMode.MODIFIED, 100, 100, 0, False, False),
        (CompactMode.TIMER, 100, 100, 3599, True, False),
        (CompactMode.TIMER, 100, 100, 3600, True, True),
        (CompactMode.TIMER, 100, 100, 7200, False, False),  # nothing changed: nothing to gain
        (CompactMode.FACTOR, 14 * MiB, 10 * MiB, 0, True, False),
        (CompactMode.FACTOR, 14 * MiB + 1, 10 * MiB, 0, True, True),
        (CompactMode.FACTOR, FACTOR_MIN_LOG - 1, 1000, 0, True, False),  # too small a log
        (CompactMode.FACTOR, FACTOR_MIN_LOG, 1000, 0, True, True),
        (CompactMode.SIZE, 100 * MiB + 5 * MiB - 1, 5 * MiB, 10**6, True, False),
        (CompactMode.SIZE, 105 * MiB, 5 * MiB, 0, True, True),
        (CompactMode.FACTOR_OR_TIMER, 3 * MiB, 3 * MiB, 3600, True, True),
        (CompactMode.FACTOR_OR_TIMER, 5 * MiB, 3 * MiB, 0, True, True),
        (CompactMode.FACTOR_OR_TIMER, 4 * MiB, 3 * MiB, 10, True, False),
        (CompactMode.SIZE_OR_TIMER, 4 * MiB, 3 * MiB, 10, True, False),
        (CompactMode.SIZE_OR_TIMER, 4 * MiB, 3 * MiB, 3600, True, True),
    ],
)
def test_trigger_policy(
    mode: CompactMode, size: int, base: int, since: float, modified: bool, due: bool
) -> None:
    policy = CompactPolicy(mode)
    assert (
        compaction_due(
            policy, log_size=size, base_size=base, seconds_since=since, modified=modified
        )
        is due
    )


def test_thresholds_are_parameters() -> None:
    small = CompactPolicy(CompactMode.SIZE, size=10)
    assert compaction_due(small, log_size=111, base_size=100, seconds_since=0, modified=True)
    quick = CompactPolicy(CompactMode.TIMER, timer=5)
    assert compaction_due(quick, log_size=1, base_size=1, seconds_since=5, modified=True)
    fast = CompactPolicy(CompactMode.FACTOR, factor=0.1)
    assert compaction_due(
        fast, log_size=3 * MiB, base_size=int(2.7 * MiB), seconds_since=0, modified=True
    )
    with pytest.raises(ValueError):
        CompactPolicy(CompactMode.SIZE, size=-1)


# --- the plan (pure) ----------------------------------------------------------------------------
F = Format.BINCODE
ROOT_W = WriteSpecific(b"r" * 32)


def hdr(*meta):  # type: ignore[no-untyped-def]
    return make_header(list(meta), F, b"payload")


def test_plan_keeps_the_newest_version_and_what_it_inherits() -> None:
    auth = Authorization(ReadEveryone(), WriteSpecific(b"k" * 32))
    p = Planner(b"c" * 16, ROOT_W)
    p.add(100, hdr(DataKey(10), Type("dir")))  # superseded
    p.add(200, hdr(DataKey(10), Type("dir"), auth))  # carries the authorisation ...
    p.add(300, hdr(DataKey(10)))  # ... the newest inherits it, and the type
    p.add(400, hdr(DataKey(11), Parent(10, 2), PublicKey(b"pk-old")))  # a key the newest drops
    p.add(500, hdr(DataKey(11), Parent(10, 2), PublicKey(b"pk-new")))
    p.add(600, hdr(DataKey(12), Parent(10, 1)))
    p.add(650, hdr(DataKey(12), Parent(10, 1), PublicKey(b"pk-new")))  # restated: not needed
    p.add(700, hdr(DataKey(13), Parent(12, 3)))  # below 12
    p.add(800, hdr(DataKey(20)))
    p.add(900, hdr(DataKey(21), Parent(20, 1)))
    p.add(950, hdr(Tombstone(20)))  # deletes 20 and 21 with everything of theirs
    p.add(960, hdr(PublicKey(b"keyless")))
    plan = p.plan()
    # depth 0: 10 (its older events first); depth 1: 12 (collection 1) before 11 (collection 2);
    # depth 2: 13; the key-less public key first of all
    assert plan.positions == [960, 200, 300, 650, 400, 500, 700]
    assert plan.objects == 4 and plan.events == 12 and plan.orphans == []


def test_plan_for_salvage_leaves_out_objects_whose_parent_is_missing() -> None:
    p = Planner(b"c" * 16, ROOT_W)
    p.add(10, hdr(DataKey(1)))
    p.add(20, hdr(DataKey(2), Parent(99, 1)))  # its parent was lost
    p.add(30, hdr(DataKey(3), Parent(2, 1)))  # and so its child
    p.add(40, hdr(DataKey(4), Parent(1, 1)))
    plan = p.plan(require_parents=True)
    assert plan.positions == [10, 40]
    assert sorted(plan.orphans) == [2, 3]


def test_plan_survives_a_cycle_of_parent_links() -> None:
    p = Planner(b"c" * 16, ROOT_W)
    p.add(10, hdr(DataKey(1), Parent(2, 1)))
    p.add(20, hdr(DataKey(2), Parent(1, 1)))
    assert sorted(p.plan(require_parents=True).orphans) == [1, 2]
    ev = Located(hdr(DataKey(3)), None, position=30)
    assert ev.position == 30


# --- compaction of a mounted chain ----------------------------------------------------------------
def test_compaction_keeps_the_state_and_shrinks_the_log(rig: Rig) -> None:
    busy_tree(rig)
    before_state, before_tree = state(rig.mounted), tree(rig.fs)
    size = rig.mounted.session.log.size()
    r = compactor(rig).compact()
    assert r.before == size and r.after < size / 2
    assert r.kept == len(rig.mounted.session.index.objects) == r.objects
    assert state(rig.mounted) == before_state
    assert tree(rig.fs) == before_tree
    assert not fsck(rig.fs)
    # the service keeps working on the new log, and it all replays
    write_file(rig.fs, ROOT_INO, b"after", b"new data")
    after = state(rig.mounted)
    assert state(reopen(rig, use_checkpoint=False)) == after
    assert state(reopen(rig)) == after and rig.mounted.from_checkpoint
    report = verify(rig.fs, 0)
    assert report.ok and report.attested


def test_compaction_copies_records_byte_for_byte(rig: Rig) -> None:
    busy_tree(rig)
    old = {f.meta for f in frames(rig.logs.disk("local")) if not f.commit}
    compactor(rig).compact()
    new = [f for f in frames(rig.logs.disk("local")) if not f.commit]
    assert new and all(f.meta in old for f in new)


def test_compacting_twice_changes_nothing_more(rig: Rig) -> None:
    busy_tree(rig)
    c = compactor(rig)
    first = c.compact()
    assert not c.modified
    second = c.compact()
    assert second.kept == first.kept and second.after == first.after


def test_writes_made_while_compacting_are_kept(rig: Rig) -> None:
    busy_tree(rig)
    fs = rig.fs
    c = compactor(rig)
    job = c.begin()
    job.build()  # off the loop in a mount; the file system goes on meanwhile:
    d = fs.lookup(ROOT_INO, b"dir").ino
    new = write_file(fs, d, b"during", b"D" * 70_000)
    rewrite(fs, fs.lookup(ROOT_INO, b"moved").ino, b"M" * 10)
    fs.unlink(d, b"f0")
    fs.rename(ROOT_INO, b"sub2", d, b"sub3")
    fs.setattr(new, __import__("application.filesystem").filesystem.SetAttr(mode=0o600))
    fh = fs.open(new)
    fs.write(fh, 100, b"dirty, not flushed yet")  # stays in memory across the switch
    job.catch_up()
    live = tree(fs)
    r = c.finish(job)
    assert r.tail_events > 0
    fs.release(fh)
    live[b"/dir/during"] = (
        stat.S_IFREG | 0o600,
        70_000,
        b"D" * 100 + b"dirty, not flushed yet" + b"D" * (70_000 - 122),
    )
    assert tree(fs) == live
    kept = state(rig.mounted)
    assert state(reopen(rig, use_checkpoint=False)) == kept


def test_a_signed_transaction_written_meanwhile_keeps_its_signature(rig: Rig) -> None:
    busy_tree(rig)
    c = compactor(rig)
    job = c.begin()
    job.build()
    write_file(rig.fs, ROOT_INO, b"signed", b"s")
    rig.fs.flush_all()
    rig.mounted.session.commit(sign=True)
    c.finish(job)
    assert b"/signed" in tree(reopen(rig, use_checkpoint=False).fs)


class Crash(Exception):
    pass


STEPS = ["begin", "planned", "copy", "built", "synced", "replacing", "replaced", "attested"]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_keeps_everything_synced(rig: Rig, step: str) -> None:
    busy_tree(rig)
    want = tree(rig.fs)
    size = rig.mounted.session.log.size()

    def hook(at: str, n: int) -> None:
        if at == step and (at != "copy" or n == 5):
            raise Crash(at)

    c = compactor(rig)
    c.hook = hook
    with pytest.raises(Crash):
        c.compact()
    rig.logs.crash()  # the power goes: unsynced bytes and temporary files are gone
    rig.mounted = rig.service.open(rig.request)
    assert tree(rig.fs) == want
    replaced = STEPS.index(step) >= STEPS.index("replaced")
    assert (rig.mounted.session.log.size() < size) is replaced


def test_a_failed_compaction_leaves_the_log_and_backs_off(rig: Rig) -> None:
    busy_tree(rig)
    raw = bytes(rig.logs.disk("local"))
    c = compactor(rig)
    c.hook = lambda at, n: (_ for _ in ()).throw(OSError("disk full")) if at == "built" else None
    c.policy = CompactPolicy(CompactMode.MODIFIED)
    assert c.due()
    with pytest.raises(OSError):
        c.compact()
    assert bytes(rig.logs.disk("local"))[: len(raw)] == raw
    assert not c.due()  # waits before trying again
    with pytest.raises(CompactionError):
        c.finish(c.begin())  # not built
    c.failed(c.job)  # type: ignore[arg-type]


def test_compaction_of_an_unencrypted_chain(logs: MemoryRedoLogFactory) -> None:
    svc = MountService(logs, FastCrypto(), FakeClock())
    req = MountRequest("local", None, Formats(Format.JSON, Format.MPACK), 0, 0)
    m = svc.open(req)
    for i in range(5):
        ino = write_file(m.fs, ROOT_INO, b"f%d" % i, b"a" * 50_000)
        rewrite(m.fs, ino, b"b" * 40_000)
    before = chain_state(m.session, m.fs.view)
    assert m.compactor is not None
    m.compactor.compact()
    assert chain_state(m.session, m.fs.view) == before
    m.close()
    m = svc.open(dataclasses.replace(req, use_checkpoint=False))
    assert chain_state(m.session, m.fs.view) == before
    m.close()


def test_due_follows_the_policy_and_the_clock(rig: Rig) -> None:
    c = compactor(rig)
    c.policy = CompactPolicy(CompactMode.TIMER, timer=60)
    write_file(rig.fs, ROOT_INO, b"f", b"x")
    assert not c.due()
    rig.clock.advance(61)
    assert c.due()
    c.compact()
    assert not c.due()  # nothing changed since
    rig.clock.advance(61)
    assert not c.due()
    write_file(rig.fs, ROOT_INO, b"g", b"y")
    assert c.due()


# --- checkpoints --------------------------------------------------------------------------------
def test_open_starts_from_the_checkpoint(rig: Rig) -> None:
    busy_tree(rig)
    want = state(rig.mounted)
    m = reopen(rig)
    assert m.from_checkpoint and m.transactions == 0
    assert state(m) == want
    assert state(reopen(rig, use_checkpoint=False)) == want


def test_after_a_crash_only_what_follows_the_checkpoint_is_replayed(rig: Rig) -> None:
    busy_tree(rig)
    reopen(rig)  # a clean unmount wrote a checkpoint
    write_file(rig.fs, ROOT_INO, b"late", b"L" * 100_000)
    rig.fs.unlink(rig.fs.lookup(ROOT_INO, b"dir").ino, b"f0")
    rig.fs.sync_all()
    want = state(rig.mounted)
    rig.logs.crash()
    rig.mounted = rig.service.open(rig.request)
    assert rig.mounted.from_checkpoint and 0 < rig.mounted.transactions < 10
    assert state(rig.mounted) == want


def _damage(blob: bytes, at: int) -> bytes:
    b = bytearray(blob)
    b[at] ^= 0x20
    return bytes(b)


@pytest.mark.parametrize("where", ["magic", "position", "body", "tail", "truncated"])
def test_a_damaged_checkpoint_is_ignored(rig: Rig, where: str) -> None:
    busy_tree(rig)
    want = state(rig.mounted)
    rig.mounted.close()
    blob = rig.logs.checkpoint("local")
    assert blob is not None
    bad = {
        "magic": lambda b: _damage(b, 0),
        "position": lambda b: _damage(b, 12),
        "body": lambda b: _damage(b, len(b) // 2),
        "tail": lambda b: _damage(b, len(b) - 1),
        "truncated": lambda b: b[: len(b) // 3],
    }[where](blob)
    rig.logs.put_checkpoint("local", bad)
    rig.mounted = rig.service.open(rig.request)
    assert not rig.mounted.from_checkpoint
    assert state(rig.mounted) == want


def test_a_checkpoint_that_does_not_match_the_log_is_ignored(rig: Rig) -> None:
    busy_tree(rig)
    rig.mounted.close()
    stale = rig.logs.checkpoint("local")
    rig.mounted = rig.service.open(rig.request)
    c = compactor(rig)
    c.compact()  # a new log: the stale checkpoint's positions mean nothing in it
    write_file(rig.fs, ROOT_INO, b"new", b"n")
    want = state(rig.mounted)
    rig.mounted.close()
    assert stale is not None
    rig.logs.put_checkpoint("local", stale)
    rig.mounted = rig.service.open(rig.request)
    assert not rig.mounted.from_checkpoint
    assert state(rig.mounted) == want


def test_a_checkpoint_beyond_a_truncated_log_is_ignored(rig: Rig) -> None:
    write_file(rig.fs, ROOT_INO, b"a", b"a")
    rig.fs.sync_all()
    early = len(rig.logs.disk("local"))
    busy_tree(rig)
    rig.mounted.close()
    del rig.logs.disk("local")[early:]  # the log lost its end (restored from a backup, say)
    rig.mounted = rig.service.open(rig.request)
    assert not rig.mounted.from_checkpoint
    assert set(tree(rig.fs)) == {b"/a"}


def test_a_checkpoint_of_another_chain_is_ignored(rig: Rig) -> None:
    other = MemoryRedoLogFactory()
    svc = MountService(other, FastCrypto(), FakeClock())
    m = svc.open(rig.request)
    write_file(m.fs, ROOT_INO, b"other", b"o")
    m.close()
    write_file(rig.fs, ROOT_INO, b"mine", b"m")
    rig.mounted.close()
    rig.logs.put_checkpoint("local", other.checkpoint("local") or b"")
    rig.mounted = rig.service.open(rig.request)
    assert not rig.mounted.from_checkpoint
    assert set(tree(rig.fs)) == {b"/mine"}


def test_a_read_only_open_uses_the_checkpoint_and_writes_none(rig: Rig) -> None:
    busy_tree(rig)
    rig.mounted.close()
    blob = rig.logs.checkpoint("local")
    m = rig.service.open(dataclasses.replace(rig.request, read_only=True))
    assert m.from_checkpoint
    m.close()
    assert rig.logs.checkpoint("local") == blob
    rig.mounted = rig.service.open(rig.request)


def test_an_indexer_with_unknown_state_saves_no_checkpoint(rig: Rig) -> None:
    write_file(rig.fs, ROOT_INO, b"f", b"x")
    rig.mounted.fs.indexer.unknown = {1: 2}  # type: ignore[attr-defined]
    assert rig.fs.indexer.export_state() is None
    rig.fs.flush_all()
    rig.mounted.session.commit()
    assert checkpoint.encode(rig.mounted.session, None) is None
    del rig.mounted.fs.indexer.unknown  # type: ignore[attr-defined]


def test_the_checkpoint_hides_names(rig: Rig) -> None:
    write_file(rig.fs, ROOT_INO, b"secret-name-1234", b"secret-content-5678")
    rig.mounted.close()
    blob = rig.logs.checkpoint("local")
    assert blob is not None and b"secret-name-1234" not in blob
    rig.mounted = rig.service.open(rig.request)


# --- repair -------------------------------------------------------------------------------------
def _files(m: Mounted) -> dict[bytes, bytes]:
    return {p: c for p, (mode, _, c) in tree(m.fs).items() if stat.S_ISREG(mode)}


def _repair(rig: Rig):  # type: ignore[no-untyped-def]
    rig.mounted.close()
    report = Repairer(rig.logs, FastCrypto(), rig.clock).repair("local", b"pw", Formats())
    rig.mounted = rig.service.open(dataclasses.replace(rig.request, use_checkpoint=False))
    assert verify(rig.fs, 0).ok
    return report


def _flip_meta(rig: Rig, pick) -> None:  # type: ignore[no-untyped-def]
    raw = rig.logs.disk("local")
    frame = pick(frames(raw))
    raw[frame.meta_offset + 2] ^= 0x10


def test_repair_of_an_intact_log_loses_nothing(rig: Rig) -> None:
    busy_tree(rig)
    want = tree(rig.fs)
    report = _repair(rig)
    assert report.clean and not report.lost and report.kept_as in rig.logs.preserved
    assert tree(rig.fs) == want


def test_repair_salvages_around_damage_in_the_middle(rig: Rig) -> None:
    fs = rig.fs
    for i in range(12):
        ino = write_file(fs, ROOT_INO, b"f%02d" % i, bytes([i]) * 50_000)
        rewrite(fs, ino, bytes([i + 100]) * 60_000)
    want = _files(rig.mounted)
    rig.mounted.close()
    # damage the first version of f05: an older version, superseded; nothing is lost
    raw = rig.logs.disk("local")
    fr = [f for f in frames(raw) if not f.commit]
    _flip_meta(rig, lambda _: fr[len(fr) // 4])
    with pytest.raises(Exception, match="repair"):
        rig.service.open(dataclasses.replace(rig.request, use_checkpoint=False))
    rig.mounted = rig.service.open(rig.request)  # (the checkpoint does not look at the prefix)
    report = _repair(rig)
    assert report.damaged and report.dropped_transactions >= 1
    got = _files(rig.mounted)
    assert set(got) <= set(want)
    assert sum(got[p] == want[p] for p in got) >= len(want) - 2


def test_repair_restores_an_older_version_when_the_newest_data_is_damaged(rig: Rig) -> None:
    ino = write_file(rig.fs, ROOT_INO, b"f", b"old" * 1000)
    rewrite(rig.fs, ino, b"new" * 1000)
    write_file(rig.fs, ROOT_INO, b"g", b"other")
    rig.mounted.close()
    raw = rig.logs.disk("local")
    pages = [f for f in typed_frames(raw, "page") if f.data_len == 12 + 3000 + 16]
    raw[pages[-1].data_offset + 100] ^= 0x01  # the newest page of f
    rig.mounted = rig.service.open(rig.request)
    report = _repair(rig)
    assert report.bad_versions == 1 and report.older == [
        "/f: its page restored from an older version"
    ]
    assert _files(rig.mounted) == {b"/f": b"old" * 1000, b"/g": b"other"}


def test_repair_saves_an_inode_whose_name_was_lost(rig: Rig) -> None:
    write_file(rig.fs, ROOT_INO, b"keep", b"k")
    ino = write_file(rig.fs, ROOT_INO, b"named", b"precious")
    rig.mounted.close()
    raw = rig.logs.disk("local")
    dentries = typed_frames(raw, "dentry")
    raw[dentries[-1].data_offset + 20] ^= 0x01  # the name of "named"
    rig.mounted = rig.service.open(rig.request)
    report = _repair(rig)
    assert report.saved == [f"inode {ino} lost its name: saved as /lost+found/#{ino}"]
    files = _files(rig.mounted)
    assert files[b"/keep"] == b"k" and files[f"/lost+found/#{ino}".encode()] == b"precious"


def test_repair_refuses_a_wrong_passcode_and_changes_nothing(rig: Rig) -> None:
    write_file(rig.fs, ROOT_INO, b"f", b"x")
    rig.mounted.close()
    raw = bytes(rig.logs.disk("local"))
    with pytest.raises(Exception, match="wrong passcode"):
        Repairer(rig.logs, FastCrypto(), rig.clock).repair("local", b"nope", Formats())
    assert bytes(rig.logs.disk("local")) == raw and not rig.logs.preserved
    rig.mounted = rig.service.open(rig.request)


def test_repair_refuses_a_mounted_chain(rig: Rig) -> None:
    with pytest.raises(Exception, match="already open for writing"):
        Repairer(rig.logs, FastCrypto(), rig.clock).repair("local", b"pw", Formats())


def test_kdf_is_fast_here() -> None:
    assert FAST_KDF == (1, 8, 1)


def test_a_checkpoint_whose_following_records_do_not_replay_falls_back_to_the_log(
    rig: Rig,
) -> None:
    """A checkpoint that authenticates and is anchored, but whose state disagrees with the
    records after it, is dropped in favour of a full replay (the log is the truth)."""
    write_file(rig.fs, ROOT_INO, b"a", b"a")
    rig.fs.flush_all()
    session = rig.mounted.session
    session.commit()
    root = session.index.objects.pop(ROOT_INO)  # a state that says the root does not exist
    forged = checkpoint.encode(session, None)
    session.index.objects[ROOT_INO] = root
    write_file(rig.fs, ROOT_INO, b"b", b"b")  # a dentry below the root: it cannot validate
    want = state(rig.mounted)
    rig.mounted.close()
    assert forged is not None
    rig.logs.put_checkpoint("local", forged)
    rig.mounted = rig.service.open(rig.request)
    assert not rig.mounted.from_checkpoint
    assert state(rig.mounted) == want


# --- is it worth it? ----------------------------------------------------------------------------
def test_live_page_bytes_follow_writes_rewrites_and_deletes(rig) -> None:
    fs = rig.fs
    fh, attr = fs.create(1, b"f", stat.S_IFREG | 0o644, 0, 0)
    fs.write(fh, 0, b"x" * 100_000)
    fs.release(fh)
    first = fs.view.page_bytes
    assert 100_000 <= first < 100_000 + 4 * 64  # the data, plus each page's AEAD overhead
    fh = fs.open(attr.ino)
    fs.write(fh, 0, b"y" * 100_000)  # rewritten: the same live size
    fs.release(fh)
    assert fs.view.page_bytes == first
    fs.unlink(1, b"f")
    assert fs.view.page_bytes == 0
    fs = rig.remount()  # from the checkpoint, and the same after a full replay
    assert fs.view.page_bytes == 0


def test_compaction_is_worth_it_only_for_garbage(rig) -> None:
    from domain.compaction import live_estimate, worth_compacting

    mib = 1024 * 1024
    assert not worth_compacting(512 * mib, 500 * mib)  # a large file just written
    assert worth_compacting(160 * mib, 32 * mib)  # a file rewritten five times
    assert not worth_compacting(mib, 0)  # too little to bother
    # 2,000 small files just written: nothing to reclaim
    fs = rig.fs
    for i in range(2000):
        fh, _ = fs.create(1, f"s{i}".encode(), stat.S_IFREG | 0o644, 0, 0)
        fs.write(fh, 0, b"s" * 4096)
        fs.release(fh)
    fs.session.commit()
    size = fs.session.log.size()
    live = live_estimate(fs.view.page_bytes, len(fs.session.index.objects))
    assert not worth_compacting(size, live), (size, live)
    for i in range(2000):
        fs.unlink(1, f"s{i}".encode())
    fs.session.commit()
    live = live_estimate(fs.view.page_bytes, len(fs.session.index.objects))
    assert worth_compacting(fs.session.log.size(), live)
