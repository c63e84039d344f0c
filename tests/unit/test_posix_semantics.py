"""The file-system service's POSIX additions without the kernel: extended attributes, O_TRUNC,
fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range, readdir's "." and "..", owner mapping
(--uid/--gid/--impersonate-uid), st_blocks of sparse files, and the upcasting rule."""

from __future__ import annotations

import errno
import stat

import msgspec
import pytest

from application.filesystem import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RENAME_EXCHANGE,
    SEEK_DATA,
    SEEK_HOLE,
    SetAttr,
)
from domain.formats import Format, decode, encode
from domain.fs.model import (
    ROOT_INO,
    XATTR_CREATE,
    XATTR_REPLACE,
    FsError,
    IdMap,
    InodeData,
    XattrData,
)

from .conftest import Rig
from .test_filesystem import raises, read_file, write_file

KiB = 1024
PS = 32 * KiB


# --- extended attributes ---------------------------------------------------------------------
def test_xattrs_set_get_list_remove_and_replay(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    value = bytes(range(256))
    rig.fs.setxattr(ino, b"user.bin", value)
    rig.fs.setxattr(ino, b"trusted.t", b"")
    rig.fs.setxattr(ino, b"security.s", b"S")
    assert rig.fs.getxattr(ino, b"user.bin") == value
    assert rig.fs.getxattr(ino, b"trusted.t") == b""
    assert sorted(rig.fs.listxattr(ino)) == [b"security.s", b"trusted.t", b"user.bin"]
    assert sorted(rig.fs.listxattr(ino, privileged=False)) == [b"security.s", b"user.bin"]
    rig.fs.removexattr(ino, b"security.s")
    rig.remount()
    assert rig.fs.getxattr(ino, b"user.bin") == value
    assert sorted(rig.fs.listxattr(ino)) == [b"trusted.t", b"user.bin"]
    rig.fs.removexattr(ino, b"user.bin")
    rig.fs.removexattr(ino, b"trusted.t")
    rig.remount()
    assert rig.fs.listxattr(ino) == []
    assert ino not in rig.fs.view.xattrs


def test_xattr_errors(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    with raises(errno.ENODATA):
        rig.fs.getxattr(ino, b"user.none")
    with raises(errno.ENODATA):
        rig.fs.removexattr(ino, b"user.none")
    rig.fs.setxattr(ino, b"user.a", b"1", XATTR_CREATE)
    with raises(errno.EEXIST):
        rig.fs.setxattr(ino, b"user.a", b"2", XATTR_CREATE)
    with raises(errno.ENODATA):
        rig.fs.setxattr(ino, b"user.b", b"2", XATTR_REPLACE)
    rig.fs.setxattr(ino, b"user.a", b"3", XATTR_REPLACE)
    assert rig.fs.getxattr(ino, b"user.a") == b"3"
    with raises(errno.EOPNOTSUPP):
        rig.fs.setxattr(ino, b"system.posix_acl_access", b"")
    with raises(errno.EOPNOTSUPP):
        rig.fs.getxattr(ino, b"other.x")
    with raises(errno.EINVAL):
        rig.fs.setxattr(ino, b"user.", b"")
    with raises(errno.ERANGE):
        rig.fs.setxattr(ino, b"user." + b"n" * 251, b"")
    with raises(errno.E2BIG):
        rig.fs.setxattr(ino, b"user.big", b"x" * (64 * KiB + 1))
    rig.fs.setxattr(ino, b"user.max", b"x" * (64 * KiB))
    for i in range(2):
        rig.fs.setxattr(ino, b"user.more%d" % i, b"y" * (64 * KiB))
    with raises(errno.ENOSPC):
        rig.fs.setxattr(ino, b"user.toomuch", b"z" * (64 * KiB))
    with raises(errno.ENOENT):
        rig.fs.getxattr(999, b"user.a")


def test_xattr_changes_ctime_and_one_event_per_change(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    before = rig.fs.getattr(ino)
    rig.clock.advance(3)
    rig.fs.setxattr(ino, b"user.a", b"1")
    after = rig.fs.getattr(ino)
    assert after.ctime_ns == before.ctime_ns + 3_000_000_000
    assert after.mtime_ns == before.mtime_ns


def test_xattrs_go_with_the_inode(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    rig.fs.setxattr(ino, b"user.a", b"1")
    rig.fs.link(ino, ROOT_INO, b"g")
    rig.fs.unlink(ROOT_INO, b"f")
    assert rig.fs.getxattr(ino, b"user.a") == b"1"
    rig.fs.unlink(ROOT_INO, b"g")
    assert ino not in rig.fs.view.xattrs
    rig.remount()
    assert ino not in rig.fs.view.xattrs
    new = write_file(rig, ROOT_INO, b"f", b"")
    assert rig.fs.listxattr(new) == []


def test_xattr_names_and_values_never_reach_the_log_in_clear(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    rig.fs.setxattr(ino, b"user.secret-attribute-name", b"secret attribute value")
    rig.fs.sync_all()
    disk = bytes(rig.logs.disk("local"))
    assert b"secret-attribute-name" not in disk
    assert b"secret attribute value" not in disk


@pytest.mark.parametrize("fmt", list(Format))
def test_xattr_payload_round_trips_in_every_format(fmt: Format) -> None:
    xa = XattrData([(b"user.a", b"\0\xff"), (b"trusted.b", b"")])
    assert decode(encode(xa, fmt), XattrData, fmt) == xa


def test_upcasting_rule_a_trailing_field_with_a_default(rig: Rig) -> None:
    """Payloads are positional: an old, shorter array decodes with the new field's default."""
    old = msgspec.msgpack.encode([0o100644, 1, 2])  # an InodeData of three fields
    assert decode(old, InodeData, Format.BINCODE) == InodeData(0o100644, 1, 2)
    assert decode(msgspec.msgpack.encode([]), XattrData, Format.BINCODE) == XattrData()


# --- open(O_TRUNC) -----------------------------------------------------------------------------
def test_open_truncate_empties_and_marks_times(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"x" * 100_000)
    rig.clock.advance(2)
    fh = rig.fs.open(ino, truncate=True)
    attr = rig.fs.getattr(ino)
    assert attr.size == 0 and attr.mtime_ns == attr.ctime_ns == rig.clock.now_ns()
    rig.fs.write(fh, 0, b"y")
    rig.fs.release(fh)
    assert read_file(rig, ino) == b"y"
    rig.clock.advance(2)
    empty = write_file(rig, ROOT_INO, b"e", b"")
    rig.clock.advance(2)
    rig.fs.release(rig.fs.open(empty, truncate=True))
    assert rig.fs.getattr(empty).mtime_ns == rig.clock.now_ns(), "even when already empty"


# --- fallocate, SEEK_DATA / SEEK_HOLE, copy_file_range -----------------------------------------
def test_fallocate_modes(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    rig.fs.write(fh, 0, b"z" * (5 * PS))
    rig.fs.fallocate(fh, 0, 0, 10 * PS)
    assert rig.fs.getattr(attr.ino).size == 10 * PS
    rig.fs.fallocate(fh, FALLOC_FL_KEEP_SIZE, 0, 20 * PS)
    assert rig.fs.getattr(attr.ino).size == 10 * PS
    rig.fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 3 * PS)
    data = rig.fs.read(fh, 0, 5 * PS)
    assert data == b"z" * 100 + bytes(3 * PS) + b"z" * (2 * PS - 100)
    rig.fs.fallocate(fh, FALLOC_FL_ZERO_RANGE, 11 * PS, 5)
    assert rig.fs.getattr(attr.ino).size == 11 * PS + 5
    with raises(errno.EOPNOTSUPP):
        rig.fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE, 0, 10)
    with raises(errno.EOPNOTSUPP):
        rig.fs.fallocate(fh, 0x08, 0, 10)  # FALLOC_FL_COLLAPSE_RANGE
    with raises(errno.EINVAL):
        rig.fs.fallocate(fh, 0, 0, 0)
    rig.fs.release(fh)
    rig.remount()
    data = read_file(rig, attr.ino)
    assert data[: 5 * PS] == b"z" * 100 + bytes(3 * PS) + b"z" * (2 * PS - 100)
    assert data[5 * PS :] == bytes(6 * PS + 5)
    assert set(rig.fs.view.pages[attr.ino]) == {0, 3, 4}, "whole punched pages are holes"


def test_seek_data_and_hole_at_page_granularity(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    rig.fs.write(fh, 2 * PS + 10, b"data")  # page 2 only
    rig.fs.setattr(attr.ino, SetAttr(size=6 * PS))
    assert rig.fs.lseek(fh, 0, SEEK_DATA) == 2 * PS
    assert rig.fs.lseek(fh, 0, SEEK_HOLE) == 0
    assert rig.fs.lseek(fh, 2 * PS + 5, SEEK_DATA) == 2 * PS + 5
    assert rig.fs.lseek(fh, 2 * PS, SEEK_HOLE) == 3 * PS
    with raises(errno.ENXIO):
        rig.fs.lseek(fh, 3 * PS, SEEK_DATA)
    with raises(errno.ENXIO):
        rig.fs.lseek(fh, 6 * PS, SEEK_HOLE)
    assert rig.fs.lseek(fh, 6 * PS - 1, SEEK_HOLE) == 6 * PS - 1
    rig.fs.fsync(fh)  # from stored pages too, not only dirty ones
    assert rig.fs.lseek(fh, 0, SEEK_DATA) == 2 * PS
    with raises(errno.EINVAL):
        rig.fs.lseek(fh, 0, 0)
    rig.fs.write(fh, 1000 * PS, b"far")  # a gap longer than there are pages
    assert rig.fs.lseek(fh, 3 * PS, SEEK_DATA) == 1000 * PS
    assert rig.fs.lseek(fh, 3 * PS, SEEK_HOLE) == 3 * PS
    rig.fs.release(fh)


def test_copy_range(rig: Rig) -> None:
    src = write_file(rig, ROOT_INO, b"src", bytes(range(256)) * 1000)
    fh_in = rig.fs.open(src)
    fh_out, dst = rig.fs.create(ROOT_INO, b"dst", 0o644, 0, 0)
    assert rig.fs.copy_range(fh_in, 1000, fh_out, 7, 100_000) == 100_000
    assert rig.fs.copy_range(fh_in, 256_000, fh_out, 0, 10) == 0
    with raises(errno.EINVAL):
        rig.fs.copy_range(fh_in, 0, fh_out, 0, 10, flags=1)
    rig.fs.release(fh_in)
    rig.fs.release(fh_out)
    assert read_file(rig, dst.ino) == bytes(7) + (bytes(range(256)) * 1000)[1000:101_000]


def test_blocks_count_stored_pages_not_holes(rig: Rig) -> None:
    fh, attr = rig.fs.create(ROOT_INO, b"f", 0o644, 0, 0)
    rig.fs.write(fh, 100 * PS, b"end")
    assert rig.fs.getattr(attr.ino).blocks == PS // 512  # the one dirty page
    rig.fs.release(fh)
    a = rig.fs.getattr(attr.ino)
    assert a.size == 100 * PS + 3 and a.blocks == PS // 512
    small = write_file(rig, ROOT_INO, b"s", b"x" * 700)
    assert rig.fs.getattr(small).blocks == 2
    assert rig.fs.getattr(ROOT_INO).blocks == 0


# --- namespace details ------------------------------------------------------------------------
def test_readdir_lists_dot_and_dotdot_and_refreshes_on_rewind(rig: Rig) -> None:
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    write_file(rig, d, b"a", b"")
    fh = rig.fs.opendir(d)
    listed = [(name, attr.ino, off) for name, attr, off in rig.fs.readdir(fh, 0)]
    assert listed == [(b".", d, 1), (b"..", ROOT_INO, 2), (b"a", listed[2][1], 3)]
    rig.fs.unlink(d, b"a")
    write_file(rig, d, b"b", b"")
    assert [n for n, _, _ in rig.fs.readdir(fh, 2)] == [], "a removed name is left out"
    assert [n for n, _, _ in rig.fs.readdir(fh, 0)] == [b".", b"..", b"b"], "rewind refreshes"
    rig.fs.releasedir(fh)
    root = [(n, a.ino) for n, a, _ in rig.fs.readdir(rig.fs.opendir(ROOT_INO), 0)][:2]
    assert root == [(b".", ROOT_INO), (b"..", ROOT_INO)]


def test_lookup_of_a_long_name_is_enametoolong(rig: Rig) -> None:
    with raises(errno.ENAMETOOLONG):
        rig.fs.lookup(ROOT_INO, b"x" * 256)


def test_rename_exchange_and_replace_mark_both_ctimes(rig: Rig) -> None:
    a = write_file(rig, ROOT_INO, b"a", b"A")
    b = write_file(rig, ROOT_INO, b"b", b"B")
    rig.fs.link(b, ROOT_INO, b"b2")
    rig.clock.advance(1)
    rig.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    now = rig.clock.now_ns()
    assert rig.fs.getattr(a).ctime_ns == now and rig.fs.getattr(b).ctime_ns == now
    c = write_file(rig, ROOT_INO, b"c", b"C")
    rig.clock.advance(1)
    rig.fs.rename(ROOT_INO, b"c", ROOT_INO, b"b2")  # b2 (inode b) is replaced; "a" names b
    assert rig.fs.getattr(b).ctime_ns == rig.clock.now_ns()
    assert rig.fs.getattr(b).nlink == 1
    assert rig.fs.lookup(ROOT_INO, b"b2").ino == c


def test_sockets_and_fifos_keep_type_and_rdev(rig: Rig) -> None:
    s = rig.fs.mknod(ROOT_INO, b"sock", stat.S_IFSOCK | 0o755, 0, 0, 0)
    c = rig.fs.mknod(ROOT_INO, b"chr", stat.S_IFCHR | 0o600, 0x0103, 0, 0)
    rig.remount()
    assert stat.S_ISSOCK(rig.fs.getattr(s.ino).mode)
    assert rig.fs.getattr(c.ino).rdev == 0x0103


def test_an_inode_the_kernel_still_references_outlives_its_last_name(rig: Rig) -> None:
    """A FIFO opened by a process is opened by the kernel alone (no open request reaches us):
    its lookup count is what keeps it (and a cwd, a socket) alive after unlink."""
    fifo = rig.fs.mknod(ROOT_INO, b"p", stat.S_IFIFO | 0o644, 0, 0, 0).ino
    rig.fs.remember(fifo)  # the entry reply of mknod
    rig.fs.remember(fifo)  # and a later lookup
    rig.clock.advance(1)
    rig.fs.unlink(ROOT_INO, b"p")
    attr = rig.fs.getattr(fifo)
    assert attr.nlink == 0 and stat.S_ISFIFO(attr.mode) and attr.ctime_ns == rig.clock.now_ns()
    assert rig.fs.is_open(fifo)
    rig.fs.forget(fifo, 1)
    assert fifo in rig.fs.view.inodes
    rig.fs.forget(fifo, 1)
    assert fifo not in rig.fs.view.inodes
    d = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    rig.fs.remember(d)
    rig.fs.rmdir(ROOT_INO, b"d")
    assert d in rig.fs.view.inodes and rig.fs.getattr(ROOT_INO).nlink == 2
    rig.fs.forget(d, 5)
    assert d not in rig.fs.view.inodes
    f = write_file(rig, ROOT_INO, b"f", b"")
    rig.fs.forget(f, 1)  # a forget of a named inode changes nothing
    rig.fs.forget(ROOT_INO, 1)  # nor one of the root
    assert f in rig.fs.view.inodes and ROOT_INO in rig.fs.view.inodes


def test_unlinked_but_referenced_inodes_are_collected_at_the_next_mount(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"data")
    rig.fs.remember(ino)
    rig.fs.unlink(ROOT_INO, b"f")
    rig.fs.sync_all()
    rig.remount()  # the kernel's references end with the mount
    assert ino not in rig.fs.view.inodes


# --- owners as shown: --uid, --gid, --impersonate-uid ------------------------------------------
def test_uid_gid_map_shows_one_owner_and_stores_the_truth(rig: Rig) -> None:
    ino = write_file(rig, ROOT_INO, b"f", b"")
    rig.fs.setattr(ino, SetAttr(uid=7, gid=8))
    rig.fs.id_map = IdMap(uid=1234, gid=2345)
    assert (rig.fs.getattr(ino).uid, rig.fs.getattr(ino).gid) == (1234, 2345)
    created = rig.fs.mkdir(ROOT_INO, b"d", 0o755, 55, 66)
    assert (created.uid, created.gid) == (1234, 2345)
    assert (rig.fs.inode(created.ino).uid, rig.fs.inode(created.ino).gid) == (55, 66)
    rig.fs.id_map = IdMap(gid=3)
    assert (rig.fs.getattr(ino).uid, rig.fs.getattr(ino).gid) == (7, 3)


def test_impersonate_maps_the_owner_both_ways(rig: Rig) -> None:
    # the root (the file system's owner) is 1000:1000 in the rig; the local user is 501:20
    rig.fs.id_map = IdMap(local=(501, 20))
    root = rig.fs.getattr(ROOT_INO)
    assert (root.uid, root.gid) == (501, 20)
    f = rig.fs.mknod(ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 501, 20)
    assert (f.uid, f.gid) == (501, 20)
    assert (rig.fs.inode(f.ino).uid, rig.fs.inode(f.ino).gid) == (1000, 1000)
    g = rig.fs.mknod(ROOT_INO, b"g", stat.S_IFREG | 0o644, 0, 7, 20)
    assert (g.uid, rig.fs.inode(g.ino).gid) == (7, 1000)
    rig.fs.setattr(g.ino, SetAttr(uid=501))
    assert rig.fs.inode(g.ino).uid == 1000 and rig.fs.getattr(g.ino).uid == 501
    rig.fs.id_map = None
    assert rig.fs.getattr(f.ino).uid == 1000


def test_id_map_is_pure() -> None:
    m = IdMap(local=(0, 0))
    assert m.show(1000, 1000, (1000, 1000)) == (0, 0)
    assert m.show(7, 1000, (1000, 1000)) == (7, 0)
    assert m.store_uid(0, (1000, 1000)) == 1000 and m.store_gid(5, (1000, 1000)) == 5
    assert not IdMap().active and IdMap(gid=0).active
    with pytest.raises(FsError):
        raise FsError(errno.EIO)
