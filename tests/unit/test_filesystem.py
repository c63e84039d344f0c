"""The file-system service without the kernel: POSIX behaviour, to the errno."""

from __future__ import annotations

import errno
import stat

import pytest

from application.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE, SetAttr
from domain.fs.model import ROOT_INO, FsError

from .conftest import Rig, tree


def raises(code: int):  # type: ignore[no-untyped-def]
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, tp, exc, tb) -> bool:  # type: ignore[no-untyped-def]
            assert tp is FsError, f"expected errno {errno.errorcode[code]}, got {tp}"
            assert exc.errno == code, f"expected {errno.errorcode[code]}, got {exc}"
            return True

    return _Ctx()


def write_file(rig: Rig, parent: int, name: bytes, data: bytes, mode: int = 0o644) -> int:
    fh, attr = rig.fs.create(parent, name, mode, 1000, 1000)
    rig.fs.write(fh, 0, data)
    rig.fs.release(fh)
    return attr.ino


def read_file(rig: Rig, ino: int) -> bytes:
    fh = rig.fs.open(ino)
    try:
        return rig.fs.read(fh, 0, rig.fs.getattr(ino).size + 10)
    finally:
        rig.fs.release(fh)


def test_root_exists_and_is_owned_by_the_mounting_user(rig: Rig) -> None:
    attr = rig.fs.getattr(ROOT_INO)
    assert stat.S_ISDIR(attr.mode)
    assert (attr.uid, attr.gid) == (1000, 1000)
    assert attr.nlink == 2


@pytest.mark.parametrize("size", [0, 1, 32767, 32768, 32769, 100_000, 3 * 32768])
def test_write_read_roundtrip_across_page_boundaries(rig: Rig, size: int) -> None:
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    ino = write_file(rig, ROOT_INO, b"f", data)
    assert read_file(rig, ino) == data
    rig.remount()
    assert read_file(rig, ino) == data
    assert rig.fs.getattr(ino).size == size


def test_small_writes_coalesce_into_pages(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    before = rig.logs.disk("local").__len__()
    for i in range(256):
        rig.fs.write(fh, i * 512, b"x" * 512)
    rig.fs.release(fh)
    grown = len(rig.logs.disk("local")) - before
    assert grown < 2 * 128 * 1024, f"256 small writes grew the log by {grown} bytes"
    assert read_file(rig, attr.ino) == b"x" * (256 * 512)


def test_one_byte_write_into_a_large_file_rewrites_one_page(rig: Rig) -> None:
    size = 8 * 1024 * 1024
    ino = write_file(rig, ROOT_INO, b"big", b"\1" * size)
    rig.fs.sync_all()
    before = len(rig.logs.disk("local"))
    fh = rig.fs.open(ino)
    rig.fs.write(fh, size // 2, b"\2")
    rig.fs.fsync(fh)
    rig.fs.release(fh)
    grown = len(rig.logs.disk("local")) - before
    assert grown < 2 * rig.fs.page_size, f"a one-byte write grew the log by {grown} bytes"
    data = read_file(rig, ino)
    assert data[size // 2] == 2 and data.count(b"\1") == size - 1


def test_pages_read_in_part_are_kept_decrypted_and_pages_read_whole_are_not(rig: Rig) -> None:
    ps = rig.fs.page_size
    data = bytes(range(256)) * (ps * 5 // 2 // 256)  # two whole pages and a half
    ino = write_file(rig, ROOT_INO, b"f", data)
    fs = rig.remount()
    session = fs.session
    loads: list[int] = []
    read_sealed = session.read_sealed

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(1)
        return read_sealed(*args, **kwargs)

    session.read_sealed = counting  # type: ignore[method-assign]
    fh = fs.open(ino)
    try:
        # Part of page 0, then another part of it: one load, the page is kept for the rest.
        assert fs.read(fh, 0, 4096) == data[:4096]
        assert fs.read(fh, 8192, 4096) == data[8192:12288]
        assert len(loads) == 1
        # Page 1 read whole, twice: the kernel keeps what it read whole; so do not we.
        assert fs.read(fh, ps, ps) == data[ps : 2 * ps]
        assert fs.read(fh, ps, ps) == data[ps : 2 * ps]
        assert len(loads) == 3
        # The last, short page read to its end counts as whole.
        assert fs.read(fh, 2 * ps, ps) == data[2 * ps :]
        assert fs.read(fh, 2 * ps, 100) == data[2 * ps : 2 * ps + 100]
        assert len(loads) == 5
    finally:
        fs.release(fh)


def test_sparse_file_reads_zeros_in_holes(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"sparse", 0o644, 0, 0)
    rig.fs.write(fh, 1_000_000, b"end")
    rig.fs.release(fh)
    data = read_file(rig, attr.ino)
    assert len(data) == 1_000_003
    assert data[:1_000_000] == bytes(1_000_000) and data.endswith(b"end")
    assert len(rig.fs.view.pages[attr.ino]) == 1


def test_truncate_down_and_up_zero_fills(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"t", b"a" * 100_000)
    rig.fs.setattr(ino, SetAttr(size=40_000))
    rig.fs.setattr(ino, SetAttr(size=90_000))
    assert read_file(rig, ino) == b"a" * 40_000 + bytes(50_000)
    rig.remount()
    assert read_file(rig, ino) == b"a" * 40_000 + bytes(50_000)


def test_truncate_drops_pages_beyond_the_new_size(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"t", b"a" * 200_000)
    rig.fs.setattr(ino, SetAttr(size=0))
    rig.fs.sync_all()
    assert not rig.fs.view.pages.get(ino)


def test_create_existing_name_is_eexist(rig: Rig) -> None:
    write_file(rig, ROOT_INO, b"a", b"1")
    with raises(errno.EEXIST):
        rig.fs.create(ROOT_INO, b"a", 0o644, 0, 0)
    with raises(errno.EEXIST):
        rig.fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0)


def test_lookup_missing_is_enoent_and_names_are_checked(rig: Rig) -> None:
    with raises(errno.ENOENT):
        rig.fs.lookup(ROOT_INO, b"nope")
    with raises(errno.ENAMETOOLONG):
        rig.fs.mkdir(ROOT_INO, b"x" * 256, 0o755, 0, 0)
    rig.fs.mkdir(ROOT_INO, b"x" * 255, 0o755, 0, 0)


def test_directories_nlink_and_rmdir(rig: Rig) -> None:
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    assert rig.fs.getattr(d).nlink == 2
    rig.fs.mkdir(d, b"sub", 0o755, 0, 0)
    assert rig.fs.getattr(d).nlink == 3
    assert rig.fs.getattr(ROOT_INO).nlink == 3
    with raises(errno.ENOTEMPTY):
        rig.fs.rmdir(ROOT_INO, b"d")
    write_file(rig, d, b"f", b"")
    with raises(errno.ENOTDIR):
        rig.fs.rmdir(d, b"f")
    rig.fs.unlink(d, b"f")
    rig.fs.rmdir(d, b"sub")
    rig.fs.rmdir(ROOT_INO, b"d")
    assert rig.fs.getattr(ROOT_INO).nlink == 2
    with raises(errno.ENOENT):
        rig.fs.lookup(ROOT_INO, b"d")


def test_unlink_directory_is_eisdir(rig: Rig) -> None:
    rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    with raises(errno.EISDIR):
        rig.fs.unlink(ROOT_INO, b"d")


def test_symlink_and_readlink(rig: Rig) -> None:
    attr = rig.fs.symlink(ROOT_INO, b"l", b"../some/where", 0, 0)
    assert stat.S_ISLNK(attr.mode) and attr.size == len(b"../some/where")
    assert rig.fs.readlink(attr.ino) == b"../some/where"
    ino = write_file(rig, ROOT_INO, b"f", b"")
    with raises(errno.EINVAL):
        rig.fs.readlink(ino)


def test_hard_links_count_and_survive_unlink(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"a", b"data")
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    assert rig.fs.link(ino, d, b"b").nlink == 2
    rig.fs.unlink(ROOT_INO, b"a")
    assert rig.fs.getattr(ino).nlink == 1
    assert read_file(rig, rig.fs.lookup(d, b"b").ino) == b"data"
    with raises(errno.EPERM):
        rig.fs.link(d, ROOT_INO, b"dirlink")


def test_rename_replaces_target_atomically(rig: Rig) -> None:
    a = write_file(rig, ROOT_INO, b"a", b"new")
    b = write_file(rig, ROOT_INO, b"b", b"old")
    rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert rig.fs.lookup(ROOT_INO, b"b").ino == a
    assert b not in rig.fs.view.inodes
    with raises(errno.ENOENT):
        rig.fs.lookup(ROOT_INO, b"a")


def test_rename_directory_rules(rig: Rig) -> None:
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    e = rig.fs.mkdir(d, b"e", 0o755, 0, 0).ino
    with raises(errno.EINVAL):
        rig.fs.rename(ROOT_INO, b"d", e, b"inside")
    write_file(rig, ROOT_INO, b"f", b"")
    with raises(errno.ENOTDIR):
        rig.fs.rename(ROOT_INO, b"d", ROOT_INO, b"f")
    with raises(errno.EISDIR):
        rig.fs.rename(ROOT_INO, b"f", d, b"e")
    rig.fs.mkdir(ROOT_INO, b"full", 0o755, 0, 0)
    write_file(rig, rig.fs.lookup(ROOT_INO, b"full").ino, b"x", b"")
    with raises(errno.ENOTEMPTY):
        rig.fs.rename(d, b"e", ROOT_INO, b"full")
    rig.fs.rename(d, b"e", ROOT_INO, b"e2")
    assert rig.fs.getattr(d).nlink == 2 and rig.fs.getattr(ROOT_INO).nlink == 5


def test_rename_noreplace_and_exchange(rig: Rig) -> None:
    a = write_file(rig, ROOT_INO, b"a", b"A")
    b = write_file(rig, ROOT_INO, b"b", b"B")
    with raises(errno.EEXIST):
        rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    assert rig.fs.lookup(ROOT_INO, b"a").ino == b
    assert rig.fs.lookup(ROOT_INO, b"b").ino == a


def test_unlinked_open_file_lives_until_release(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"tmp", 0o600, 0, 0)
    rig.fs.write(fh, 0, b"still here")
    rig.fs.unlink(ROOT_INO, b"tmp")
    assert rig.fs.read(fh, 0, 100) == b"still here"
    assert rig.fs.getattr(attr.ino).nlink == 0
    rig.fs.release(fh)
    assert attr.ino not in rig.fs.view.inodes


def test_setattr_mode_owner_times(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"x", mode=0o6755)
    attr = rig.fs.setattr(ino, SetAttr(mode=0o4700))
    assert stat.S_IMODE(attr.mode) == 0o4700 and stat.S_ISREG(attr.mode)
    attr = rig.fs.setattr(ino, SetAttr(uid=5, gid=6))
    assert (attr.uid, attr.gid) == (5, 6)
    assert not attr.mode & stat.S_ISUID, "chown clears set-user-ID"
    attr = rig.fs.setattr(ino, SetAttr(atime_ns=123_000_000_001, mtime_ns=456_000_000_002))
    assert (attr.atime_ns, attr.mtime_ns) == (123_000_000_001, 456_000_000_002)


def test_write_leaves_setuid_to_the_kernel(rig: Rig) -> None:
    """The kernel clears set-user-ID with a setattr before an unprivileged write (a writer with
    CAP_FSETID keeps it, as on ext4); the service must not clear it on its own."""
    ino = write_file(rig, ROOT_INO, b"f", b"x")
    rig.fs.setattr(ino, SetAttr(mode=0o4755))
    fh = rig.fs.open(ino)
    rig.fs.write(fh, 0, b"y")
    rig.fs.release(fh)
    assert rig.fs.getattr(ino).mode & stat.S_ISUID


def test_mtime_and_ctime_follow_changes(rig: Rig) -> None:
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    t0 = rig.fs.getattr(d).mtime_ns
    rig.clock.advance(5)
    write_file(rig, d, b"f", b"")
    assert rig.fs.getattr(d).mtime_ns == t0 + 5_000_000_000


def test_readdir_lists_every_entry_once_while_the_directory_changes(rig: Rig) -> None:
    names = [f"n{i:04}".encode() for i in range(300)]
    for n in names:
        write_file(rig, ROOT_INO, n, b"")
    fh = rig.fs.opendir(ROOT_INO)
    seen = []
    for name, _attr, nxt in rig.fs.readdir(fh, 0):
        seen.append(name)
        if nxt == 100:
            break
    write_file(rig, ROOT_INO, b"zz-new", b"")
    rig.fs.unlink(ROOT_INO, b"n0299")
    for name, _attr, _nxt in rig.fs.readdir(fh, 100):
        seen.append(name)
    rig.fs.releasedir(fh)
    assert len(seen) == len(set(seen))
    assert set(names[:-1]) <= set(seen)


def test_statfs_reports_figures(rig: Rig) -> None:
    write_file(rig, ROOT_INO, b"f", b"x")
    s = rig.fs.statfs()
    assert s.block_size == rig.fs.page_size and s.blocks > 0 and s.files >= 2
    assert s.name_max == 255


def test_many_files_in_one_directory_and_lookup_is_a_dict(rig: Rig) -> None:
    for i in range(2000):
        rig.fs.mknod(ROOT_INO, f"f{i}".encode(), stat.S_IFREG | 0o644, 0, 0, 0)
    assert rig.fs.lookup(ROOT_INO, b"f1999").size == 0
    assert len(tree(rig.fs)) == 2000


def test_fifo_and_device_nodes_keep_their_type(rig: Rig) -> None:
    attr = rig.fs.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    assert stat.S_ISFIFO(attr.mode)
    rig.remount()
    assert stat.S_ISFIFO(rig.fs.lookup(ROOT_INO, b"fifo").mode)


def test_names_and_contents_never_reach_the_log_in_clear(rig: Rig) -> None:
    d = rig.fs.mkdir(ROOT_INO, b"secret-directory-name", 0o755, 0, 0).ino
    write_file(rig, d, b"secret-file-name.txt", b"the secret contents of a file " * 100)
    rig.fs.symlink(d, b"link", b"secret-link-target", 0, 0)
    rig.fs.sync_all()
    disk = bytes(rig.logs.disk("local"))
    for needle in (b"secret-directory-name", b"secret-file-name", b"secret contents",
                   b"secret-link-target"):  # fmt: skip
        assert needle not in disk
