"""The tree at a time in the history view (issue 15 part B; docs/adr/0023): ``history/@TIME/``
and ``history/@TIME.json`` (what `wasmer-dfs restore --recursive` reads), and a history view
limited to a mount of the past's own transactions. On the in-memory rig (a fake clock)."""

from __future__ import annotations

import errno
import json

import pytest

from application.history import Cut, cut_at
from application.ports.views import NodeKind
from application.views.history import HistoryView, past_ms
from domain.fs.model import ROOT_INO, FsError

from .conftest import Rig
from .test_compaction import rewrite, write_file

HOUR_MS = 3_600_000


def the_past(rig: Rig) -> int:
    """t0 + 1 h (returned): d/x v1, d/sub/y, d/link -> x; then d/x v2 (longer), d/sub removed,
    d/new."""
    fs, clock = rig.fs, rig.clock
    d = fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000).ino
    sub = fs.mkdir(d, b"sub", 0o750, 1000, 1000).ino
    x = write_file(fs, d, b"x", b"x1" * 5000)
    write_file(fs, sub, b"y", b"y")
    fs.symlink(d, b"link", b"x", 1000, 1000)
    fs.sync_all()
    clock.advance(3600)
    noted = clock.now_ms()
    clock.advance(3600)
    rewrite(fs, x, b"x2" * 6000)
    fs.unlink(sub, b"y")
    fs.rmdir(d, b"sub")
    write_file(fs, d, b"new", b"n")
    fs.sync_all()
    return noted


def test_past_names() -> None:
    assert past_ms("@1733233800123") == 1733233800123
    assert past_ms("@1970-01-01T00:00:01.5Z") == 1500
    assert past_ms("@1970-01-01T01:00:01+01:00") == 1000
    assert past_ms("@1970-01-01T00:00:02") == 2000  # no offset: UTC
    for not_one in ("@", "@yesterday", "1733233800123", "x@1", ""):
        assert past_ms(not_one) is None, not_one


def test_the_tree_at_a_time_is_browsable_and_listed(rig: Rig) -> None:
    noted = the_past(rig)
    view = HistoryView(rig.fs)
    at = f"@{noted}"
    assert view.node((at,)) == view.node((at, "d", "sub")) == view.node(()) is not None
    assert view.node((at, "d", "sub")).kind is NodeKind.DIR  # type: ignore[union-attr]
    assert view.list((at,)) == ["d"]
    assert view.list((at, "d")) == ["sub", "x"]  # the symlink only in the listing
    assert view.read((at, "d", "x")) == b"x1" * 5000
    assert view.read((at, "d", "sub", "y")) == b"y"
    for missing in ((at, "d", "new"), (at, "d", "link"), (at, ".wasmer-dfs")):
        assert view.node(missing) is None
        with pytest.raises(FsError) as info:
            view.read(missing)
        assert info.value.errno == errno.ENOENT
    listing = json.loads(view.read((f"{at}.json",)))
    entries = {e["path"]: e for e in listing["entries"]}
    assert list(entries) == ["d", "d/link", "d/sub", "d/x", "d/sub/y"]  # parents first
    assert entries["d/sub"] == {"path": "d/sub", "type": "dir", "mode": "750"}
    assert entries["d/link"]["target"] == "x" and entries["d/x"]["size"] == 10_000
    # now: the live tree; before the first transaction: nothing
    now = json.loads(view.read((f"@{rig.clock.now_ms()}.json",)))
    assert [e["path"] for e in now["entries"]] == ["d", "d/link", "d/new", "d/x"]
    assert view.node(("@1000",)) is None and view.node(("@1000.json",)) is None


def test_a_mount_of_the_past_has_no_history_after_its_time(rig: Rig) -> None:
    noted = the_past(rig)
    live = HistoryView(rig.fs)
    assert [v["size"] for v in json.loads(live.read(("d", "x", ".versions.json")))] == [
        10_000, 12_000,
    ]  # fmt: skip
    cut = cut_at(rig.mounted.session, noted)
    past = HistoryView(rig.fs, Cut(cut.transactions, cut.at_ms, cut.oldest_ms))
    assert [v["size"] for v in json.loads(past.read(("d", "x", ".versions.json")))] == [10_000]
    assert past.node(("d", "new")) is None  # born after
    later = json.loads(past.read((f"@{rig.clock.now_ms()}.json",)))
    assert [e["path"] for e in later["entries"]] == ["d", "d/link", "d/sub", "d/x", "d/sub/y"]
