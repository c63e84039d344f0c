"""The history window (issue 15, ``--keep-history``; docs/adr/0007 "History window"): the pure
rule in domain/compaction.py, and a compaction on the in-memory rig that keeps every version
newer than the window and deleted files for that long, so that time travel reaches back to the
cutoff and no further."""

from __future__ import annotations

import dataclasses

import pytest

from application.compaction import Compactor, history_space
from application.history import PastError
from domain.compaction import (
    MOUNT_HISTORY_MS,
    SERVE_HISTORY_MS,
    CompactPolicy,
    HistoryWindow,
    prefix_at,
)
from domain.fs.model import ROOT_INO
from tests.fakes import frames

from .conftest import Rig, tree
from .test_compaction import rewrite, write_file

HOUR_MS = 3_600_000


# --- the rule (pure) ----------------------------------------------------------------------------
def test_defaults_keep_a_week_on_a_server_and_nothing_on_a_mount() -> None:
    assert SERVE_HISTORY_MS == 7 * 24 * HOUR_MS
    assert MOUNT_HISTORY_MS == 0
    assert CompactPolicy().window == HistoryWindow(0)
    with pytest.raises(ValueError, match="negative"):
        HistoryWindow(-1)
    with pytest.raises(ValueError, match="negative"):
        CompactPolicy(keep_history_ms=-1)


def test_the_window_keeps_what_is_newer_than_its_cutoff() -> None:
    w = HistoryWindow(2 * HOUR_MS)
    now = 10 * HOUR_MS
    assert w.cutoff(now) == 8 * HOUR_MS
    assert w.keeps(8 * HOUR_MS + 1, now) and not w.keeps(8 * HOUR_MS, now)
    assert not HistoryWindow(0).keeps(now, now)


def test_a_compaction_folds_the_prefix_up_to_the_last_transaction_at_the_cutoff() -> None:
    times: list[int | None] = [1, 2, None, 5, 3, 9]
    assert prefix_at(times, 0) == 0
    assert prefix_at(times, 2) == 3  # a transaction without a time takes the one before's
    assert prefix_at(times, 4) == 5  # a late-stamped one does not stop the prefix
    assert prefix_at(times, 100) == 6
    assert HistoryWindow(0).folded(times, 0) == 6  # no window: everything is folded
    assert HistoryWindow(5).folded(times, 9) == 5  # cutoff 4
    assert HistoryWindow(5).folded([], 9) == 0


# --- a compaction with a window -----------------------------------------------------------------
def compactor(rig: Rig, window_ms: int) -> Compactor:
    c = rig.mounted.compactor
    assert c is not None
    c.policy = dataclasses.replace(c.policy, keep_history_ms=window_ms)
    return c


def as_of(rig: Rig, ms: int) -> dict[bytes, tuple[int, int, bytes]]:
    """The tree as of ``ms`` (a read-only replay up to it), the rig reopened afterwards."""
    rig.mounted.close()
    try:
        past = rig.service.open(
            dataclasses.replace(rig.request, read_only=True, use_checkpoint=False, as_of_ms=ms)
        )
        try:
            return tree(past.fs)
        finally:
            past.close()
    finally:
        rig.mounted = rig.service.open(rig.request)


def history(rig: Rig) -> tuple[int, int]:
    """(t0, inode of a): v1 and b at t0, v2 at t1 = t0 + 1 h, v3 and b deleted at t3 = t0 + 3 h;
    now is t0 + 4 h."""
    fs, clock = rig.fs, rig.clock
    t0 = clock.now_ms()
    a = write_file(fs, ROOT_INO, b"a", b"1" * 50_000)
    write_file(fs, ROOT_INO, b"b", b"B" * 30_000)
    fs.sync_all()
    clock.advance(3600)
    rewrite(fs, a, b"2" * 50_000)
    clock.advance(2 * 3600)
    rewrite(fs, a, b"3" * 50_000)
    fs.unlink(ROOT_INO, b"b")
    fs.sync_all()
    clock.advance(3600)
    return t0, a


def test_versions_and_deleted_files_inside_the_window_stay(rig: Rig) -> None:
    t0, _ = history(rig)
    before_live = tree(rig.fs)
    before_past = as_of(rig, t0 + 2 * HOUR_MS)
    events_before = [f for f in frames(rig.logs.disk("local")) if not f.commit]
    assert before_past[b"/a"][2] == b"2" * 50_000 and b"/b" in before_past
    size = rig.mounted.session.log.size()
    r = compactor(rig, 2 * HOUR_MS).compact()  # cutoff: t0 + 2 h
    assert r.history_events > 0 and r.after < size  # v1 went, v3 and b's deletion stayed
    assert tree(rig.fs) == before_live
    # the past from the cutoff on is as it was: v2, and b not yet deleted
    assert as_of(rig, t0 + 2 * HOUR_MS) == before_past
    assert as_of(rig, t0 + 3 * HOUR_MS + 1) == before_live
    # before the window nothing is left: v1 was folded away; the oldest time is v2's
    with pytest.raises(PastError, match="before the oldest time"):
        as_of(rig, t0 + HOUR_MS // 2)
    events_after = [f for f in frames(rig.logs.disk("local")) if not f.commit]
    assert len(events_after) == r.kept + r.history_events < len(events_before)


def test_a_window_of_zero_folds_everything(rig: Rig) -> None:
    t0, _ = history(rig)
    live = tree(rig.fs)
    r = compactor(rig, 0).compact()
    assert r.history_events == 0
    assert tree(rig.fs) == live
    with pytest.raises(PastError, match="before the oldest time"):
        as_of(rig, t0 + 2 * HOUR_MS)


def test_a_window_longer_than_the_log_keeps_every_version(rig: Rig) -> None:
    t0, _ = history(rig)
    past = as_of(rig, t0 + 30 * 60_000)
    events = [f for f in frames(rig.logs.disk("local")) if not f.commit]
    r = compactor(rig, 24 * HOUR_MS).compact()
    assert r.kept == r.events == 0 and r.history_events == len(events)
    assert as_of(rig, t0 + 30 * 60_000) == past
    assert past[b"/a"][2] == b"1" * 50_000


def test_history_space_measures_what_a_compaction_without_window_reclaims(rig: Rig) -> None:
    history(rig)
    space = history_space(rig.mounted.session)
    assert space.log_bytes == rig.mounted.session.log.size()
    # two superseded 50 000-byte versions and the deleted 30 000-byte file
    assert space.history_bytes > 130_000
    assert 80_000 > space.live_bytes > 50_000
    assert space.oldest_ms is not None
    compactor(rig, 0).compact()
    after = history_space(rig.mounted.session)
    assert after.live_bytes == space.live_bytes
    assert after.history_bytes < 10_000  # seals and the attestation
