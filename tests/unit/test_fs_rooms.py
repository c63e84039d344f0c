"""The rooms FileSystemService delegates to (issue 13; application/fs/): the handle table with
the kernel's lookup counts, the structured-payload codec, and the page cache and write buffer.
The service's behaviour through them is covered by test_filesystem.py and test_posix_semantics.py;
these pin each room's own promises."""

from __future__ import annotations

import errno

import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from application.fs.codec import decode_struct, encode_struct
from application.fs.handles import HandleTable
from application.fs.pages import PageBuffer
from application.fs.values import SEEK_DATA, SEEK_HOLE
from application.session import ChainIntegrityError, ChainSession, Formats
from domain.formats import Format
from domain.fs.model import FsError, InodeData
from domain.fs.view import FsView
from tests.fakes import FAST_KDF, FastCrypto

PS = 4096


# -- handle table --------------------------------------------------------------------------------
def test_handles_count_opens_per_inode_and_refuse_unknown_handles() -> None:
    t = HandleTable()
    a, b = t.open_file(7), t.open_file(7)
    d = t.open_dir(1)
    assert len({a, b, d}) == 3  # one numbering for files and directories
    assert t.open_count(7) == 2 and t.is_open(7)
    assert t.file(a).ino == 7 and t.dir(d).ino == 1
    with pytest.raises(FsError) as exc:
        t.file(d)
    assert exc.value.errno == errno.EBADF
    closed = t.close_file(a)
    assert closed is not None and closed.ino == 7 and t.open_count(7) == 1
    assert t.close_file(a) is None
    t.close_file(b)
    assert t.open_count(7) == 0 and not t.is_open(7)
    t.close_dir(d)
    with pytest.raises(FsError):
        t.dir(d)


def test_kernel_references_keep_an_inode_until_the_last_is_forgotten() -> None:
    t = HandleTable()
    t.remember(9)
    t.remember(9)
    assert t.referenced(9) and t.is_open(9)
    assert t.forget(9, 1) is False and t.referenced(9)
    assert t.forget(9, 1) is True and not t.referenced(9) and not t.is_open(9)


# -- codec ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(Format))
def test_structured_payloads_name_their_format(fmt: Format) -> None:
    inode = InodeData(0o100644, 1, 2, 3, 4, 5, 6)
    payload = encode_struct(inode, fmt)
    assert payload[0] == int(fmt)
    assert decode_struct(payload, InodeData) == inode


@pytest.mark.parametrize("payload", [b"", b"\x09{}", b"\x03not json"])
def test_undecodable_payloads_are_integrity_errors(payload: bytes) -> None:
    with pytest.raises(ChainIntegrityError):
        decode_struct(payload, InodeData)


# -- page cache and write buffer -----------------------------------------------------------------
class Rig:
    def __init__(self, size: int = 0) -> None:
        self.session = ChainSession.create(
            MemoryRedoLogFactory(), "pages", None, FastCrypto(), FakeClock(), Formats(), PS,
            kdf=FAST_KDF,
        )  # fmt: skip
        self.size = size
        self.full = False
        self.pages = PageBuffer(
            self.session, FsView(), lambda ino: None, self.room, lambda ino: self.size,
            cache_bytes=4 * PS, event_overhead=100,
        )  # fmt: skip

    def room(self, nbytes: int) -> None:
        if self.full:
            raise FsError(errno.ENOSPC)

    def write(self, offset: int, buf: bytes) -> None:
        self.pages.write(5, self.size, offset, buf)
        self.size = max(self.size, offset + len(buf))


def test_writes_are_buffered_per_page_and_read_back() -> None:
    r = Rig()
    r.write(0, b"a" * 10)
    r.write(10, b"b" * 10)  # the same page: still one dirty page
    r.write(3 * PS + 1, b"c")  # a hole between
    assert r.pages.dirty_bytes == 2 * PS
    assert r.session.pending_bytes == 0  # nothing written to the log yet
    assert r.pages.read(5, r.size, 0, 20) == b"a" * 10 + b"b" * 10
    assert r.pages.read(5, r.size, PS, PS) == bytes(PS)  # the hole reads as zeros
    assert r.pages.read(5, r.size, 3 * PS, 2) == b"\0c"
    assert r.pages.blocks(5, r.size) == 2 * PS // 512  # two pages exist; the holes do not count


def test_flush_writes_one_event_per_dirty_page_and_keeps_pages_on_a_full_disk() -> None:
    r = Rig()
    r.write(0, b"x" * (PS + 1))
    r.full = True
    with pytest.raises(FsError) as exc:
        r.pages.flush(5)
    assert exc.value.errno == errno.ENOSPC
    assert r.pages.dirty_bytes == 2 * PS and r.session.pending_bytes == 0  # nothing lost
    r.full = False
    r.pages.flush_all()
    assert r.pages.dirty_bytes == 0
    assert r.session.pending_bytes == PS + 1  # the last page cut to the file's size


def test_truncate_and_zero_range_of_buffered_pages() -> None:
    r = Rig()
    r.write(0, b"y" * (3 * PS))
    r.pages.truncate(5, r.size, PS + 2)
    r.size = PS + 2
    assert r.pages.dirty_bytes == 2 * PS  # page 2 is gone, page 1 cut
    assert r.pages.read(5, r.size, PS, 10) == b"yy"
    r.pages.zero_range(5, 1, PS + 2, r.size)  # page 1 as a whole, page 0 from byte 1
    assert r.pages.read(5, r.size, 0, r.size) == b"y" + bytes(PS + 1)
    assert r.pages.seek(5, r.size, PS, SEEK_HOLE) == PS  # page 1 is a hole again
    with pytest.raises(FsError) as exc:
        r.pages.seek(5, r.size, PS, SEEK_DATA)
    assert exc.value.errno == errno.ENXIO
    assert r.pages.dirty_bytes == PS  # page 0 is the one left dirty: the count follows
    r.pages.drop(5)
    assert r.pages.dirty_bytes == 0 and r.pages.read(5, r.size, 0, 1) == b"\0"
