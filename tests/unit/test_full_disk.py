"""The file-system service on a full disk, without the kernel (an in-memory log with a space
limit): changes are refused with ENOSPC before their first event, buffered data is never
dropped by a failed flush, deletions may use the reserve, and everything works again once there
is room. The ``rig`` fixture checks at teardown that a replay rebuilds the same tree."""

from __future__ import annotations

import errno

import pytest

from domain.fs.model import ROOT_INO, FsError

from .conftest import Rig

PAGE = 32768


def full(rig: Rig, left: int = 0) -> None:
    """The disk has ``left`` bytes beyond the reserve."""
    rig.logs.space.free = rig.fs.SPACE_RESERVE + left


def enospc(fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as e:
        fn(*args)
    assert e.value.errno == errno.ENOSPC
    return e.value


def test_changes_are_refused_before_their_first_event(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"kept", 0o644, 1000, 1000)
    rig.fs.write(fh, 0, b"k" * 1000)
    rig.fs.fsync(fh)
    full(rig)
    end = rig.fs.session.log.size()
    enospc(rig.fs.mkdir, ROOT_INO, b"d", 0o755, 1000, 1000)
    enospc(rig.fs.create, ROOT_INO, b"new", 0o644, 1000, 1000)
    enospc(rig.fs.symlink, ROOT_INO, b"l", b"target", 1000, 1000)
    enospc(rig.fs.link, attr.ino, ROOT_INO, b"hard")
    enospc(rig.fs.rename, ROOT_INO, b"kept", ROOT_INO, b"moved")
    enospc(rig.fs.setxattr, attr.ino, b"user.a", b"v")
    enospc(rig.fs.write, fh, 1000, b"more")
    assert rig.fs.session.log.size() == end, "a refused change wrote to the log"
    assert rig.fs.view.lookup(ROOT_INO, b"new") is None
    assert rig.fs.read(fh, 0, 2000) == b"k" * 1000
    rig.logs.space.free = None
    rig.fs.release(fh)


def test_a_failed_flush_keeps_the_data_and_a_later_one_writes_it(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 1000, 1000)
    data = bytes(range(256)) * (3 * PAGE // 256)
    rig.fs.write(fh, 0, data)  # buffered: the disk has room for it
    full(rig, left=PAGE)  # but not for three pages any more
    enospc(rig.fs.fsync, fh)
    enospc(rig.fs.flush, fh)  # close(2) reports it too
    assert rig.fs.read(fh, 0, len(data)) == data  # still readable, from the buffer
    rig.logs.space.free = None  # room again
    rig.fs.fsync(fh)
    rig.fs.release(fh)
    fh = rig.fs.open(attr.ino)
    assert rig.fs.read(fh, 0, len(data)) == data
    rig.fs.release(fh)
    rig.remount()
    fh = rig.fs.open(attr.ino)
    assert rig.fs.read(fh, 0, len(data)) == data
    rig.fs.release(fh)


def test_release_on_a_full_disk_keeps_the_pages_for_the_next_flush(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 1000, 1000)
    rig.fs.write(fh, 0, b"r" * (2 * PAGE))
    full(rig)
    enospc(rig.fs.release, fh)
    rig.logs.space.free = None
    rig.fs.sync_all()  # what the background tick does once there is room
    rig.remount()
    fh = rig.fs.open(attr.ino)
    assert rig.fs.read(fh, 0, 3 * PAGE) == b"r" * (2 * PAGE)
    rig.fs.release(fh)


def test_deleting_may_use_the_reserve(rig: Rig) -> None:
    for name in (b"a", b"b"):
        fh, _ = rig.fs.create(ROOT_INO, name, 0o644, 1000, 1000)
        rig.fs.write(fh, 0, b"x" * 100)
        rig.fs.release(fh)
    rig.fs.mkdir(ROOT_INO, b"d", 0o755, 1000, 1000)
    rig.fs.sync_all()
    full(rig)
    rig.fs.unlink(ROOT_INO, b"a")
    rig.fs.rmdir(ROOT_INO, b"d")
    rig.fs.sync_all()
    assert rig.fs.view.lookup(ROOT_INO, b"a") is None
    rig.logs.space.free = 100  # not even room for a deletion: refused, nothing half done
    enospc(rig.fs.unlink, ROOT_INO, b"b")
    assert rig.fs.view.lookup(ROOT_INO, b"b") is not None
    rig.logs.space.free = None


def test_only_the_writer_hears_of_it_and_close_reports_what_was_lost(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 1000, 1000)
    rig.fs.write(fh, 0, b"w" * PAGE)
    reader = rig.fs.open(attr.ino)
    full(rig)
    rig.fs.flush(reader)  # a handle that did not write: its close(2) succeeds
    assert rig.fs.read(reader, 0, PAGE) == b"w" * PAGE
    rig.fs.release(reader)
    enospc(rig.fs.flush, fh)
    rig.logs.space.free = 0  # not even room for the head's signature
    err = enospc(rig.fs.close)  # the unmount: says what could not be saved
    assert "could not be saved" in str(err)
    rig.logs.space.free = None
    rig.fs.release(fh)
