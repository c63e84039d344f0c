"""POSIX conformance, to the errno: every test runs against the mount AND, as the control, a
plain directory on the local disk. Each states the expected result of its calls; a difference
between the two targets is allowed only where ``differs()`` names it, and every such name is
explained in docs/conformance.md (``test_every_difference_is_documented``)."""

from __future__ import annotations

import errno
import mmap
import os
import random
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import USER_A, USER_B, Target, as_user, needs_patch
from .posix_calls import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    O_TMPFILE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    UTIME_NOW,
    UTIME_OMIT,
    RawDir,
    err,
    fallocate,
    getxattr_size,
    listxattr_size,
    renameat2,
    utimensat,
)

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]

#: Where the mount may differ from a local disk; each key is explained in docs/conformance.md.
DIFFERENCES = {
    "o_tmpfile": "O_TMPFILE is refused with EOPNOTSUPP",
    "dir_size": "a directory's st_size is 0",
    "atime_on_read": "reads do not update atime (the mount is noatime)",
    "seek_granularity": "SEEK_DATA/SEEK_HOLE work in pages of 32 KiB",
    "xattr_space": "extended attributes of one inode may take 256 KiB (ext4: one block)",
    "posix_acl": "POSIX ACLs (system.posix_acl_*) are not supported: EOPNOTSUPP",
    "nodev": "device nodes cannot be opened (the mount is nodev, like every FUSE mount)",
    "writeback_seek": "--write-back: SEEK_DATA/SEEK_HOLE see the whole file as data",
    "writeback_truncate_mtime": "--write-back: truncate(2) by path may leave mtime and ctime",
}


def differs(t: Target, key: str, plain: object, mount: object) -> object:
    """The expected value on this target, where the mount differs for a documented reason
    (keys starting with ``writeback_``: only the mount with ``--write-back``)."""
    assert key in DIFFERENCES
    if key.startswith("writeback_"):
        return mount if t.kind == "writeback" else plain
    return mount if t.is_mount else plain


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def rnd(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


OLD = (1_000_000_000, 1_000_000_000)  # a time long ago, to see whether an op changes it


def age(path: Path) -> None:
    """Set atime and mtime far back, so that "did the call change them" needs no sleep."""
    os.utime(path, ns=(OLD[0] * 10**9, OLD[1] * 10**9), follow_symlinks=False)


def mtime_changed(path: Path) -> bool:
    return os.lstat(path).st_mtime_ns != OLD[1] * 10**9


# ================================================================================================
# open(2): O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_DIRECTORY, O_NOFOLLOW, O_TMPFILE
# ================================================================================================
def test_open_missing_is_enoent(target: Target) -> None:
    assert err(os.open, target / "nope", os.O_RDONLY) == errno.ENOENT


def test_open_creat_excl(target: Target) -> None:
    fd = os.open(target / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o640
    assert err(os.open, target / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == errno.EEXIST
    os.symlink("dangling", target / "l")
    assert err(os.open, target / "l", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_open_creat_applies_umask(target: Target) -> None:
    old = os.umask(0o027)
    try:
        os.close(os.open(target / "f", os.O_CREAT | os.O_WRONLY, 0o777))
        os.mkdir(target / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(target / "d").st_mode) == 0o750


def test_open_creat_through_dangling_symlink_creates_the_target(target: Target) -> None:
    os.symlink("real", target / "l")
    os.close(os.open(target / "l", os.O_CREAT | os.O_WRONLY, 0o644))
    assert stat.S_ISREG(os.lstat(target / "real").st_mode)


def test_open_trunc_empties_and_marks_mtime(target: Target) -> None:
    write(target / "f", b"hello world")
    age(target / "f")
    fd = os.open(target / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x")
    os.close(fd)
    assert read(target / "f") == b"x"
    assert mtime_changed(target / "f")
    write(target / "e", b"")
    age(target / "e")
    os.close(os.open(target / "e", os.O_WRONLY | os.O_TRUNC))
    assert mtime_changed(target / "e"), "O_TRUNC marks mtime even on an empty file"
    age(target / "e")
    os.close(os.open(target / "e", os.O_RDONLY | os.O_TRUNC))
    assert os.stat(target / "e").st_size == 0


def test_open_trunc_then_shorter_write_leaves_no_tail(target: Target) -> None:
    write(target / "f", rnd(100 * KiB))
    write(target / "f", b"short")
    assert read(target / "f") == b"short"
    target.remount()
    assert read(target / "f") == b"short"


def test_open_append_writes_at_the_end(target: Target) -> None:
    write(target / "f", b"abc")
    fd = os.open(target / "f", os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"def")
    os.pwrite(fd, b"ghi", 0)  # Linux: pwrite on O_APPEND appends too
    os.close(fd)
    fd2 = os.open(target / "f", os.O_RDWR | os.O_APPEND)
    os.write(fd2, b"jk")
    os.close(fd2)
    assert read(target / "f") == b"abcdefghijk"


def test_two_appenders_interleave_without_loss(target: Target) -> None:
    a = os.open(target / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(target / "log", os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(a if i % 2 else b, b"%03d\n" % i)
    os.close(a)
    os.close(b)
    assert read(target / "log") == b"".join(b"%03d\n" % i for i in range(50))


def test_open_directory_flags(target: Target) -> None:
    os.mkdir(target / "d")
    write(target / "f", b"")
    assert err(os.open, target / "d", os.O_WRONLY) == errno.EISDIR
    assert err(os.open, target / "d", os.O_RDWR) == errno.EISDIR
    assert err(os.open, target / "f", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    os.close(os.open(target / "d", os.O_RDONLY | os.O_DIRECTORY))
    fd = os.open(target / "d", os.O_RDONLY)
    assert err(os.read, fd, 10) == errno.EISDIR
    os.close(fd)


def test_open_nofollow_on_symlink_is_eloop(target: Target) -> None:
    write(target / "f", b"")
    os.symlink("f", target / "l")
    assert err(os.open, target / "l", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP


def test_o_tmpfile(target: Target) -> None:
    code = err(os.open, target.root, O_TMPFILE | os.O_RDWR, 0o600)
    assert code == differs(target, "o_tmpfile", 0, errno.EOPNOTSUPP)


def test_path_through_a_file_is_enotdir(target: Target) -> None:
    write(target / "f", b"")
    assert err(os.stat, target / "f" / "x") == errno.ENOTDIR
    assert err(os.open, target / "f" / "x", os.O_CREAT | os.O_WRONLY) == errno.ENOTDIR
    assert err(os.mkdir, target / "f" / "x") == errno.ENOTDIR


def test_name_too_long(target: Target) -> None:
    long, ok = "x" * 256, "y" * 255
    assert err(os.stat, target / long) == errno.ENAMETOOLONG
    assert err(os.open, target / long, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert err(os.mkdir, target / long) == errno.ENAMETOOLONG
    assert err(os.symlink, "t", target / long) == errno.ENAMETOOLONG
    write(target / ok, b"")
    assert err(os.rename, target / ok, target / long) == errno.ENAMETOOLONG
    assert err(os.link, target / ok, target / long) == errno.ENAMETOOLONG
    assert ok in os.listdir(target.root)


def test_symlink_loops_are_eloop(target: Target) -> None:
    os.symlink("b", target / "a")
    os.symlink("a", target / "b")
    assert err(os.stat, target / "a") == errno.ELOOP
    assert err(os.open, target / "a", os.O_RDONLY) == errno.ELOOP
    write(target / "f", b"end")
    prev = "f"
    for i in range(41):  # Linux follows at most 40 links in one lookup
        os.symlink(prev, target / f"c{i}")
        prev = f"c{i}"
    assert read(target / "c39") == b"end"
    assert err(os.stat, target / "c40") == errno.ELOOP


# ================================================================================================
# read(2), write(2), pread/pwrite, lseek(2), holes and big files
# ================================================================================================
def test_read_write_basics_and_bad_descriptors(target: Target) -> None:
    write(target / "f", b"0123456789")
    fd = os.open(target / "f", os.O_RDONLY)
    assert os.read(fd, 4) == b"0123"
    assert os.read(fd, 100) == b"456789"
    assert os.read(fd, 100) == b""
    assert err(os.write, fd, b"x") == errno.EBADF
    os.close(fd)
    fd = os.open(target / "f", os.O_WRONLY)
    assert err(os.read, fd, 1) == errno.EBADF
    os.close(fd)
    assert err(os.read, fd, 1) == errno.EBADF


@pytest.mark.parametrize("offset", [0, 1, 4095, 32767, 32768, 65535, 1 * MiB - 3])
def test_pwrite_pread_across_page_boundaries(target: Target, offset: int) -> None:
    base = rnd(200 * KiB, seed=offset)
    write(target / "f", base)
    patch = rnd(70 * KiB, seed=offset + 1)
    fd = os.open(target / "f", os.O_RDWR)
    assert os.pwrite(fd, patch, offset) == len(patch)
    expect = bytearray(base)
    if offset > len(expect):
        expect += bytes(offset - len(expect))
    expect[offset : offset + len(patch)] = patch
    assert os.pread(fd, len(expect) + 10, 0) == bytes(expect)
    assert os.pread(fd, 3, offset + 5) == bytes(expect[offset + 5 : offset + 8])
    assert os.fstat(fd).st_size == len(expect)
    os.close(fd)


def test_write_beyond_the_end_leaves_a_hole_of_zeros(target: Target) -> None:
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"head")
    os.lseek(fd, 1 * MiB, os.SEEK_SET)
    os.write(fd, b"tail")
    assert os.lseek(fd, 0, os.SEEK_END) == 1 * MiB + 4
    assert os.pread(fd, 1 * MiB + 100, 0) == b"head" + bytes(1 * MiB - 4) + b"tail"
    st = os.fstat(fd)
    assert st.st_blocks * 512 < 256 * KiB, "a sparse file does not store its hole"
    os.close(fd)


def test_lseek_whence_and_errors(target: Target) -> None:
    write(target / "f", b"0123456789")
    fd = os.open(target / "f", os.O_RDONLY)
    assert os.lseek(fd, 3, os.SEEK_SET) == 3
    assert os.lseek(fd, 2, os.SEEK_CUR) == 5
    assert os.lseek(fd, -1, os.SEEK_END) == 9
    assert err(os.lseek, fd, -1, os.SEEK_SET) == errno.EINVAL
    assert os.lseek(fd, 100, os.SEEK_SET) == 100
    assert os.read(fd, 5) == b""
    os.close(fd)


def test_file_over_4_gib(target: Target) -> None:
    off = 5 * GiB + 12345
    fd = os.open(target / "big", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"beyond 4 GiB", off)
    os.pwrite(fd, b"start", 0)
    assert os.fstat(fd).st_size == off + 12
    assert os.pread(fd, 12, off) == b"beyond 4 GiB"
    assert os.pread(fd, 8, 4 * GiB) == bytes(8)
    os.close(fd)
    target.remount()
    fd = os.open(target / "big", os.O_RDONLY)
    assert os.pread(fd, 12, off) == b"beyond 4 GiB"
    assert os.pread(fd, 5, 0) == b"start"
    os.close(fd)
    assert os.stat(target / "big").st_size == off + 12
    os.truncate(target / "big", 4 * GiB + 1)
    assert os.stat(target / "big").st_size == 4 * GiB + 1


def test_large_sequential_write_is_intact(target: Target) -> None:
    data = rnd(9 * MiB + 7, seed=9)
    with open(target / "f", "wb") as f:
        for i in range(0, len(data), 100_000):
            f.write(data[i : i + 100_000])
    assert read(target / "f") == data


def seek(fd: int, offset: int, whence: int) -> int:
    """lseek's result, or -errno."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        return -(exc.errno or 1)


def test_seek_data_and_seek_hole(target: Target) -> None:
    needs_patch(target)
    # 64 KiB-aligned regions: the same answers at 4 KiB (ext4) and 32 KiB (mount) granularity.
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"a" * 64 * KiB, 0)
    os.pwrite(fd, b"b" * 64 * KiB, 1 * MiB)
    os.ftruncate(fd, 2 * MiB)
    calls = [
        (0, os.SEEK_DATA, 0),
        (0, os.SEEK_HOLE, 64 * KiB),
        (100 * KiB, os.SEEK_DATA, 1 * MiB),
        (1 * MiB + 5, os.SEEK_DATA, 1 * MiB + 5),
        (1 * MiB, os.SEEK_HOLE, 1 * MiB + 64 * KiB),
        (1 * MiB + 64 * KiB, os.SEEK_HOLE, 1 * MiB + 64 * KiB),
        (1 * MiB + 64 * KiB, os.SEEK_DATA, -errno.ENXIO),
        (2 * MiB, os.SEEK_DATA, -errno.ENXIO),
        (2 * MiB, os.SEEK_HOLE, -errno.ENXIO),
        (2 * MiB - 1, os.SEEK_HOLE, 2 * MiB - 1),
    ]
    got = [seek(fd, off, whence) for off, whence, _ in calls]
    os.close(fd)
    whole_file = [
        -errno.ENXIO if off >= 2 * MiB else off if whence == os.SEEK_DATA else 2 * MiB
        for off, whence, _ in calls
    ]
    assert got == differs(target, "writeback_seek", [c[2] for c in calls], whole_file)


def test_seek_hole_granularity(target: Target) -> None:
    needs_patch(target)
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"x", 40 * KiB)  # 4 KiB block 10; 32 KiB page 1
    os.ftruncate(fd, 1 * MiB)
    expected = differs(target, "seek_granularity", 40 * KiB, 32 * KiB)
    expected = differs(target, "writeback_seek", expected, 0)
    assert os.lseek(fd, 0, os.SEEK_DATA) == expected
    os.close(fd)


# ================================================================================================
# truncate(2), ftruncate(2), fallocate(2), copy_file_range(2)
# ================================================================================================
def test_truncate_shrinks_grows_and_marks_times(target: Target) -> None:
    write(target / "f", b"a" * 100_000)
    age(target / "f")
    os.truncate(target / "f", 40_000)
    marks = differs(target, "writeback_truncate_mtime", True, None)  # None: the kernel decides
    assert marks is None or mtime_changed(target / "f") == marks
    os.truncate(target / "f", 90_000)
    assert read(target / "f") == b"a" * 40_000 + bytes(50_000)
    age(target / "f")
    fd = os.open(target / "f", os.O_RDWR)
    os.ftruncate(fd, 10)
    assert os.fstat(fd).st_size == 10
    os.close(fd)
    assert mtime_changed(target / "f"), "ftruncate marks mtime"
    age(target / "f")
    os.truncate(target / "f", 10)  # same size: still marks mtime (ext4 and POSIX alike)
    assert marks is None or mtime_changed(target / "f") == marks
    target.remount()
    assert read(target / "f") == b"a" * 10


def test_truncate_errors(target: Target) -> None:
    os.mkdir(target / "d")
    write(target / "f", b"abc")
    assert err(os.truncate, target / "d", 0) == errno.EISDIR
    assert err(os.truncate, target / "f", -1) == errno.EINVAL
    assert err(os.truncate, target / "nope", 0) == errno.ENOENT
    fd = os.open(target / "f", os.O_RDONLY)
    assert err(os.ftruncate, fd, 0) == errno.EINVAL
    os.close(fd)


def test_fallocate_modes(target: Target) -> None:
    needs_patch(target)
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"z" * 100 * KiB)
    fallocate(fd, 0, 0, 1 * MiB)  # mode 0 grows the size
    assert os.fstat(fd).st_size == 1 * MiB
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 3 * MiB)
    assert os.fstat(fd).st_size == 1 * MiB
    os.posix_fallocate(fd, 0, 1 * MiB + 1)
    assert os.fstat(fd).st_size == 1 * MiB + 1
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 10, 70 * KiB)
    assert os.fstat(fd).st_size == 1 * MiB + 1
    assert os.pread(fd, 100 * KiB, 0) == b"z" * 10 + bytes(70 * KiB) + b"z" * (30 * KiB - 10)
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 90 * KiB, 20 * KiB)
    assert os.pread(fd, 10 * KiB, 90 * KiB) == bytes(10 * KiB)
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 2 * MiB, 10)
    assert os.fstat(fd).st_size == 2 * MiB + 10
    assert err(fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 10) == errno.EOPNOTSUPP
    assert err(fallocate, fd, 0, 0, 0) == errno.EINVAL
    assert err(fallocate, fd, 0, -1, 10) == errno.EINVAL
    os.close(fd)
    target.remount()
    with open(target / "f", "rb") as f:
        expected = b"z" * 10 + bytes(70 * KiB) + b"z" * (20 * KiB - 10) + bytes(10 * KiB)
        assert f.read(100 * KiB) == expected


def test_punched_hole_is_a_hole_for_seek(target: Target) -> None:
    needs_patch(target)
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"q" * 1 * MiB)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 * KiB, 256 * KiB)
    got = (os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 256 * KiB, os.SEEK_DATA))
    assert got == differs(target, "writeback_seek", (256 * KiB, 512 * KiB), (1 * MiB, 256 * KiB))
    assert os.pread(fd, 4, 300 * KiB) == bytes(4)
    os.close(fd)


def test_fallocate_marks_mtime_and_ctime(target: Target) -> None:
    needs_patch(target)
    write(target / "f", b"x" * 10)
    for mode in (0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE):
        age(target / "f")
        fd = os.open(target / "f", os.O_RDWR)
        fallocate(fd, mode, 0, 4096)
        os.close(fd)
        assert mtime_changed(target / "f"), mode


def test_fallocate_on_fifo_and_dir(target: Target) -> None:
    os.mkfifo(target / "p")
    fd = os.open(target / "p", os.O_RDWR)
    assert err(fallocate, fd, 0, 0, 10) == errno.ESPIPE
    os.close(fd)


def test_copy_file_range(target: Target) -> None:
    data = rnd(300 * KiB, seed=3)
    write(target / "src", data)
    write(target / "dst", b"d" * 10)
    fi = os.open(target / "src", os.O_RDONLY)
    fo = os.open(target / "dst", os.O_WRONLY)
    n = 0
    while n < 200 * KiB:
        got = os.copy_file_range(fi, fo, 200 * KiB - n, 1000 + n, 5 + n)
        assert got > 0
        n += got
    os.close(fi)
    os.close(fo)
    assert read(target / "dst") == b"d" * 5 + data[1000 : 1000 + 200 * KiB]


# ================================================================================================
# mmap(2)
# ================================================================================================
def test_shared_writable_mmap(target: Target) -> None:
    write(target / "f", b"\0" * 100 * KiB)
    fd = os.open(target / "f", os.O_RDWR)
    m = mmap.mmap(fd, 100 * KiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:5] = b"hello"
    m[70 * KiB : 70 * KiB + 5] = b"world"
    m.flush()
    fd2 = os.open(target / "f", os.O_RDONLY)
    assert os.pread(fd2, 5, 0) == b"hello"
    os.close(fd2)
    m[50:55] = b"later"
    m.close()
    os.close(fd)
    data = read(target / "f")
    assert data[:5] == b"hello" and data[50:55] == b"later"
    assert data[70 * KiB : 70 * KiB + 5] == b"world" and len(data) == 100 * KiB
    target.remount()
    data = read(target / "f")
    assert data[:5] == b"hello" and data[50:55] == b"later"


def test_private_mmap_writes_stay_private(target: Target) -> None:
    write(target / "f", b"original")
    fd = os.open(target / "f", os.O_RDONLY)
    m = mmap.mmap(fd, 8, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:3] = b"NEW"
    assert m[:8] == b"NEWginal"
    m.close()
    os.close(fd)
    assert read(target / "f") == b"original"


def test_mmap_sees_writes_through_write(target: Target) -> None:
    write(target / "f", b"a" * 8192)
    fd = os.open(target / "f", os.O_RDWR)
    m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ)
    os.pwrite(fd, b"B", 4100)
    assert m[4100:4101] == b"B"
    m.close()
    os.close(fd)


# ================================================================================================
# fsync(2), fdatasync(2), sync, dup
# ================================================================================================
def test_fsync_fdatasync_and_directory_fsync(target: Target) -> None:
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(target.root, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    os.sync()


def test_dup_shares_the_offset(target: Target) -> None:
    write(target / "f", b"0123456789")
    fd = os.open(target / "f", os.O_RDONLY)
    fd2 = os.dup(fd)
    assert os.read(fd, 3) == b"012"
    assert os.read(fd2, 3) == b"345"
    os.close(fd)
    os.close(fd2)


def test_unlinked_open_file_lives_until_closed(target: Target) -> None:
    fd = os.open(target / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"still here")
    os.unlink(target / "f")
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, 100, 0) == b"still here"
    os.pwrite(fd, b"!", 10)
    assert os.pread(fd, 100, 0) == b"still here!"
    assert err(os.stat, target / "f") == errno.ENOENT
    os.close(fd)
    assert os.listdir(target.root) == []


def test_unlinked_fifo_and_directory_stay_while_in_use(target: Target) -> None:
    os.mkfifo(target / "p")
    fd = os.open(target / "p", os.O_RDWR)  # a FIFO is opened by the kernel alone
    os.unlink(target / "p")
    st = os.fstat(fd)
    assert stat.S_ISFIFO(st.st_mode) and st.st_nlink == 0
    os.write(fd, b"still a pipe")
    assert os.read(fd, 100) == b"still a pipe"
    os.close(fd)
    os.mkdir(target / "d")
    dfd = os.open(target / "d", os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(target / "d")
    st = os.fstat(dfd)
    assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 0
    os.close(dfd)
    assert os.listdir(target.root) == []


def test_fstat_follows_the_inode_through_rename(target: Target) -> None:
    write(target / "a", b"abc")
    fd = os.open(target / "a", os.O_RDONLY)
    os.rename(target / "a", target / "b")
    assert os.fstat(fd).st_ino == os.stat(target / "b").st_ino
    assert os.read(fd, 10) == b"abc"
    os.close(fd)


# ================================================================================================
# stat(2) family
# ================================================================================================
def test_stat_of_each_file_type(target: Target) -> None:
    write(target / "f", b"12345")
    os.mkdir(target / "d")
    os.symlink("f", target / "l")
    os.mkfifo(target / "p")
    f, d, l_, p = (os.lstat(target / n) for n in "fdlp")
    assert stat.S_ISREG(f.st_mode) and f.st_size == 5 and f.st_nlink == 1
    assert stat.S_ISDIR(d.st_mode) and d.st_nlink == 2
    assert d.st_size == differs(target, "dir_size", 4096, 0)
    assert stat.S_ISLNK(l_.st_mode) and l_.st_size == 1 and stat.S_IMODE(l_.st_mode) == 0o777
    assert stat.S_ISFIFO(p.st_mode) and p.st_size == 0
    assert os.stat(target / "l").st_ino == f.st_ino
    assert f.st_uid == os.getuid() and f.st_gid == os.getgid()
    assert len({f.st_ino, d.st_ino, l_.st_ino, p.st_ino}) == 4
    assert f.st_dev == d.st_dev
    assert f.st_blksize > 0


def test_new_file_times_and_parent_times(target: Target) -> None:
    os.mkdir(target / "d")
    age(target / "d")
    before = time.time_ns()
    write(target / "d" / "f", b"x")
    st = os.stat(target / "d" / "f")
    assert abs(st.st_mtime_ns - before) < 5 * 10**9
    assert st.st_ctime_ns == st.st_mtime_ns or abs(st.st_ctime_ns - st.st_mtime_ns) < 10**9
    assert mtime_changed(target / "d"), "creating a name changes the directory's mtime"
    age(target / "d")
    os.unlink(target / "d" / "f")
    assert mtime_changed(target / "d"), "removing a name changes the directory's mtime"


def test_atime_after_read(target: Target) -> None:
    write(target / "f", b"data")
    age(target / "f")
    read(target / "f")
    updated = os.stat(target / "f").st_atime_ns != OLD[0] * 10**9
    assert updated == differs(target, "atime_on_read", True, False)


# ================================================================================================
# chmod(2), chown(2), utimensat(2), ctime
# ================================================================================================
@pytest.mark.parametrize("mode", [0o000, 0o644, 0o755, 0o1777, 0o2755, 0o4755, 0o6711, 0o7777])
def test_chmod_keeps_every_bit(target: Target, mode: int) -> None:
    write(target / "f", b"")
    os.mkdir(target / "d")
    os.chmod(target / "f", mode)
    os.chmod(target / "d", mode)
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == mode
    assert stat.S_IMODE(os.stat(target / "d").st_mode) == mode
    os.chmod(target / "d", 0o755)


def test_chmod_and_chown_change_ctime(target: Target) -> None:
    write(target / "f", b"")
    c0 = os.stat(target / "f").st_ctime_ns
    time.sleep(0.02)
    os.chmod(target / "f", 0o600)
    c1 = os.stat(target / "f").st_ctime_ns
    assert c1 > c0
    time.sleep(0.02)
    os.chown(target / "f", 1234, 5678)
    st = os.stat(target / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678) and st.st_ctime_ns > c1
    time.sleep(0.02)
    os.utime(target / "f", ns=(5, 6))
    assert os.stat(target / "f").st_ctime_ns > st.st_ctime_ns


def test_chown_clears_setuid_and_setgid(target: Target) -> None:
    cases = {"a": 0o6755, "b": 0o2745, "c": 0o4700}
    for name, mode in cases.items():
        write(target / name, b"")
        os.chmod(target / name, mode)
        os.chown(target / name, 1000, 1000)
    assert stat.S_IMODE(os.stat(target / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "b").st_mode) == 0o2745  # no group-x: sgid stays
    assert stat.S_IMODE(os.stat(target / "c").st_mode) == 0o700
    os.mkdir(target / "d")
    os.chmod(target / "d", 0o2755)
    os.chown(target / "d", 1000, 1000)
    assert stat.S_IMODE(os.stat(target / "d").st_mode) == 0o2755, "directories keep setgid"
    write(target / "e", b"")
    os.chmod(target / "e", 0o4755)
    os.chown(target / "e", -1, -1)
    assert stat.S_IMODE(os.stat(target / "e").st_mode) == 0o755


def test_lchown_changes_the_link_not_the_target(target: Target) -> None:
    write(target / "f", b"")
    os.symlink("f", target / "l")
    os.chown(target / "l", 4321, 4321, follow_symlinks=False)
    assert os.lstat(target / "l").st_uid == 4321
    assert os.stat(target / "f").st_uid == os.getuid()
    os.chown(target / "l", 1111, 1111)
    assert os.stat(target / "f").st_uid == 1111


def test_write_by_root_keeps_setuid(target: Target) -> None:
    write(target / "f", b"x")
    os.chmod(target / "f", 0o6755)
    with open(target / "f", "r+b") as f:
        f.write(b"y")
    os.truncate(target / "f", 0)
    # CAP_FSETID: a privileged writer keeps both bits (the kernel decides, not the file system)
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o6755


def test_write_by_a_user_clears_setuid_and_setgid(target: Target) -> None:
    write(target / "f", b"x")
    os.chown(target / "f", *USER_A)
    os.chmod(target / "f", 0o6775)

    def append() -> int:
        with open(target / "f", "ab") as f:
            return f.write(b"more")

    assert as_user(USER_A, append) == 4
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o775
    assert read(target / "f") == b"xmore"
    os.chmod(target / "f", 0o4755)
    assert as_user(USER_A, lambda: os.truncate(target / "f", 1)) is None
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o755
    os.chmod(target / "f", 0o6745)  # set-group-ID without group-execute: no set-user-ID left
    assert as_user(USER_A, lambda: os.truncate(target / "f", 0)) is None
    assert stat.S_IMODE(os.stat(target / "f").st_mode) == 0o2745


def test_utimensat_explicit_now_and_omit(target: Target) -> None:
    write(target / "f", b"")
    utimensat(target / "f", (1000, 111), (2000, 222))
    st = os.stat(target / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 111, 2000 * 10**9 + 222)
    utimensat(target / "f", (0, UTIME_OMIT), (3000, 333))
    st = os.stat(target / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 111, 3000 * 10**9 + 333)
    before = time.time_ns() - 10**9
    utimensat(target / "f", (0, UTIME_NOW), (0, UTIME_OMIT))
    st = os.stat(target / "f")
    assert st.st_atime_ns >= before and st.st_mtime_ns == 3000 * 10**9 + 333
    c0 = st.st_ctime_ns
    time.sleep(0.02)
    utimensat(target / "f", (0, UTIME_OMIT), (0, UTIME_OMIT))
    assert os.stat(target / "f").st_ctime_ns >= c0
    os.utime(target / "f")
    st = os.stat(target / "f")
    assert st.st_mtime_ns >= before and st.st_atime_ns >= before
    target.remount()
    assert os.stat(target / "f").st_mtime_ns == st.st_mtime_ns


def test_utime_on_a_symlink_itself(target: Target) -> None:
    write(target / "f", b"")
    os.symlink("f", target / "l")
    os.utime(target / "l", ns=(7 * 10**9, 8 * 10**9), follow_symlinks=False)
    assert os.lstat(target / "l").st_mtime_ns == 8 * 10**9
    assert os.stat(target / "f").st_mtime_ns != 8 * 10**9


def test_futimens_and_fchmod_fchown(target: Target) -> None:
    write(target / "f", b"")
    fd = os.open(target / "f", os.O_RDWR)
    os.utime(fd, ns=(11, 22))
    os.fchmod(fd, 0o600)
    os.fchown(fd, 77, 88)
    st = os.fstat(fd)
    os.close(fd)
    assert (st.st_atime_ns, st.st_mtime_ns) == (11, 22)
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (77, 88)


def test_utime_negative_and_far_future_times(target: Target) -> None:
    write(target / "f", b"")
    os.utime(target / "f", ns=(-(10**9) - 5, 4_000_000_000 * 10**9 + 7))
    st = os.stat(target / "f")
    assert st.st_atime_ns == -(10**9) - 5
    assert st.st_mtime_ns == 4_000_000_000 * 10**9 + 7


# ================================================================================================
# permissions (the mount uses default_permissions: the kernel checks what we store)
# ================================================================================================
def test_permission_denied_for_other_users(target: Target) -> None:
    write(target / "private", b"secret", 0o600)
    write(target / "public", b"hello", 0o644)
    os.mkdir(target / "closed", 0o700)
    os.mkdir(target / "ro", 0o555)
    assert as_user(USER_A, lambda: read(target / "private")) == ("errno", errno.EACCES)
    assert as_user(USER_A, lambda: read(target / "public")) == b"hello"
    assert as_user(USER_A, lambda: write(target / "public", b"x")) == ("errno", errno.EACCES)
    assert as_user(USER_A, lambda: os.listdir(target / "closed")) == ("errno", errno.EACCES)
    assert as_user(USER_A, lambda: os.mkdir(target / "ro" / "x")) == ("errno", errno.EACCES)
    assert as_user(USER_A, lambda: os.access(target / "public", os.W_OK)) is False
    assert as_user(USER_A, lambda: os.access(target / "public", os.R_OK)) is True
    assert as_user(USER_A, lambda: os.chmod(target / "public", 0o777)) == ("errno", errno.EPERM)
    assert as_user(USER_A, lambda: os.chown(target / "public", *USER_A)) == (
        "errno",
        errno.EPERM,
    )
    assert as_user(USER_A, lambda: os.utime(target / "public", ns=(1, 1))) == (
        "errno",
        errno.EPERM,
    )


def test_execute_permission(target: Target) -> None:
    script = target / "run.sh"
    write(script, b"#!/bin/sh\necho ran $1\n", 0o755)
    out = subprocess.run([str(script), "ok"], capture_output=True, check=True).stdout
    assert out == b"ran ok\n"
    os.chmod(script, 0o644)
    assert as_user(USER_A, lambda: subprocess.run([str(script)], check=False)) == (
        "errno",
        errno.EACCES,
    )


def test_sticky_directory(target: Target) -> None:
    os.mkdir(target / "tmp")
    os.chmod(target / "tmp", 0o1777)

    def make() -> None:
        write(target / "tmp" / "a-file", b"of user a", 0o666)

    as_user(USER_A, make)
    b_unlink = as_user(USER_B, lambda: os.unlink(target / "tmp" / "a-file"))
    assert b_unlink == ("errno", errno.EPERM)
    b_rename = as_user(USER_B, lambda: os.rename(target / "tmp" / "a-file", target / "tmp" / "x"))
    assert b_rename == ("errno", errno.EPERM)
    assert as_user(USER_B, lambda: read(target / "tmp" / "a-file")) == b"of user a"
    assert as_user(USER_A, lambda: os.unlink(target / "tmp" / "a-file")) is None


def test_setgid_directory(target: Target) -> None:
    os.mkdir(target / "shared")
    os.chown(target / "shared", 0, 5000)
    os.chmod(target / "shared", 0o2777)

    def make() -> None:
        write(target / "shared" / "f", b"", 0o644)
        os.mkdir(target / "shared" / "sub", 0o755)
        fd = os.open(target / "shared" / "g", os.O_CREAT | os.O_WRONLY, 0o2755)
        os.close(fd)

    as_user(USER_A, make)
    f = os.stat(target / "shared" / "f")
    sub = os.stat(target / "shared" / "sub")
    g = os.stat(target / "shared" / "g")
    assert f.st_gid == 5000 and f.st_uid == USER_A[0]
    assert sub.st_gid == 5000 and sub.st_mode & stat.S_ISGID
    assert g.st_gid == 5000 and not g.st_mode & stat.S_ISGID, "not a member: sgid stripped"
    as_user(USER_A, lambda: write(target / "shared" / "sub" / "x", b""))
    assert os.stat(target / "shared" / "sub" / "x").st_gid == 5000


def test_group_permissions(target: Target) -> None:
    write(target / "f", b"group data", 0o640)
    os.chown(target / "f", 0, 5000)
    assert as_user(USER_A, lambda: read(target / "f")) == ("errno", errno.EACCES)
    assert as_user(USER_A, lambda: read(target / "f"), groups=(5000,)) == b"group data"


# ================================================================================================
# directories: mkdir(2), rmdir(2), readdir(3)
# ================================================================================================
def test_mkdir_errors_and_nlink(target: Target) -> None:
    os.mkdir(target / "d")
    assert err(os.mkdir, target / "d") == errno.EEXIST
    assert err(os.mkdir, target / "missing" / "d") == errno.ENOENT
    write(target / "f", b"")
    assert err(os.mkdir, target / "f") == errno.EEXIST
    n0 = os.stat(target.root).st_nlink
    os.mkdir(target / "e")
    os.mkdir(target / "e" / "sub")
    assert os.stat(target.root).st_nlink == n0 + 1
    assert os.stat(target / "e").st_nlink == 3
    os.rmdir(target / "e" / "sub")
    assert os.stat(target / "e").st_nlink == 2


def test_rmdir_errors(target: Target) -> None:
    os.mkdir(target / "d")
    write(target / "d" / "f", b"")
    write(target / "f", b"")
    assert err(os.rmdir, target / "d") == errno.ENOTEMPTY
    assert err(os.rmdir, target / "f") == errno.ENOTDIR
    assert err(os.rmdir, target / "nope") == errno.ENOENT
    assert err(os.rmdir, f"{target / 'd'}/.") == errno.EINVAL  # (pathlib would drop the ".")
    assert err(os.rmdir, f"{target / 'd'}/..") == errno.ENOTEMPTY
    os.unlink(target / "d" / "f")
    os.rmdir(target / "d")
    assert err(os.stat, target / "d") == errno.ENOENT


def test_unlink_errors(target: Target) -> None:
    os.mkdir(target / "d")
    assert err(os.unlink, target / "d") == errno.EISDIR
    assert err(os.unlink, target / "nope") == errno.ENOENT
    write(target / "f", b"")
    assert err(os.unlink, target / "f" / "x") == errno.ENOTDIR


def test_readdir_lists_dot_and_dotdot(target: Target) -> None:
    os.mkdir(target / "d")
    write(target / "d" / "f", b"")
    os.mkdir(target / "d" / "sub")
    with RawDir(target / "d") as d:
        entries = {name: (ino, typ) for name, ino, typ in d.read()}
    assert set(entries) == {b".", b"..", b"f", b"sub"}
    assert entries[b"."][0] == os.stat(target / "d").st_ino
    assert entries[b".."][0] == os.stat(target.root).st_ino
    assert entries[b"f"][0] == os.stat(target / "d" / "f").st_ino
    assert entries[b"sub"][1] == 4 and entries[b"f"][1] == 8  # DT_DIR, DT_REG
    out = subprocess.run(["ls", "-a1", str(target / "d")], capture_output=True, check=True)
    assert out.stdout.split() == [b".", b"..", b"f", b"sub"]
    with RawDir(target / "d" / "sub") as d:
        assert sorted(n for n, _, _ in d.read()) == [b".", b".."]
    assert sorted(os.listdir(target / "d")) == ["f", "sub"]


def test_readdir_stays_correct_while_the_directory_changes(target: Target) -> None:
    names = {f"n{i:04}".encode() for i in range(600)}
    for n in names:
        os.close(os.open(target.root / n.decode(), os.O_CREAT | os.O_WRONLY, 0o644))
    seen: list[bytes] = []
    with RawDir(target.root) as d:
        seen += [n for n, _, _ in d.read(150)]
        removed = sorted(names - set(seen))[:50]
        for n in removed:
            os.unlink(target.root / n.decode())
        for i in range(50):
            os.close(os.open(target / f"new{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        seen += [n for n, _, _ in d.read()]
    listed = [n for n in seen if n not in (b".", b"..")]
    assert len(listed) == len(set(listed)), "no name twice"
    assert names - set(removed) <= set(listed), "every name that stayed is listed"
    assert set(listed) <= names | {f"new{i}".encode() for i in range(50)}


def test_rewinddir_sees_the_current_directory(target: Target) -> None:
    write(target / "a", b"")
    with RawDir(target.root) as d:
        first = {n for n, _, _ in d.read()}
        write(target / "b", b"")
        os.unlink(target / "a")
        d.rewind()
        second = {n for n, _, _ in d.read()}
    assert first == {b".", b"..", b"a"}
    assert second == {b".", b"..", b"b"}


def test_scandir_types_and_inodes(target: Target) -> None:
    write(target / "f", b"")
    os.mkdir(target / "d")
    os.symlink("f", target / "l")
    os.mkfifo(target / "p")
    got = {e.name: (e.is_file(follow_symlinks=False), e.is_dir(), e.is_symlink(), e.inode())
           for e in os.scandir(target.root)}  # fmt: skip
    assert got["f"][:3] == (True, False, False)
    assert got["d"][:3] == (False, True, False)
    assert got["l"][:3] == (False, False, True)
    assert got["p"][:3] == (False, False, False)
    assert got["f"][3] == os.lstat(target / "f").st_ino


def test_many_entries(target: Target) -> None:
    for i in range(3000):
        os.close(os.open(target / f"entry-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    assert len(os.listdir(target.root)) == 3000
    assert os.stat(target / "entry-2999").st_size == 0


def test_cwd_in_a_removed_directory(target: Target) -> None:
    os.mkdir(target / "d")
    old = os.getcwd()
    try:
        os.chdir(target / "d")
        assert os.getcwd() == str(target / "d")
        os.rmdir(target / "d")
        assert err(os.open, "new", os.O_CREAT | os.O_WRONLY) == errno.ENOENT
        assert err(os.listdir, ".") in (0, errno.ENOENT)
    finally:
        os.chdir(old)


# ================================================================================================
# rename(2), renameat2(2)
# ================================================================================================
def test_rename_replaces_the_target_atomically(target: Target) -> None:
    write(target / "new", b"new contents")
    write(target / "old", b"old contents")
    ino = os.stat(target / "new").st_ino
    fd = os.open(target / "old", os.O_RDONLY)
    os.rename(target / "new", target / "old")
    assert os.stat(target / "old").st_ino == ino
    assert read(target / "old") == b"new contents"
    assert os.read(fd, 100) == b"old contents", "an open replaced file stays readable"
    os.close(fd)
    assert sorted(os.listdir(target.root)) == ["old"]


def test_save_by_rename_like_an_editor(target: Target) -> None:
    write(target / "doc.txt", b"v1")
    os.chmod(target / "doc.txt", 0o640)
    for v in range(2, 6):
        write(target / ".doc.txt.swp", b"v%d" % v)
        os.chmod(target / ".doc.txt.swp", 0o640)
        fd = os.open(target / ".doc.txt.swp", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.rename(target / ".doc.txt.swp", target / "doc.txt")
    assert read(target / "doc.txt") == b"v5" and os.listdir(target.root) == ["doc.txt"]
    target.remount()
    assert read(target / "doc.txt") == b"v5"


def test_rename_onto_a_hard_link_of_itself_does_nothing(target: Target) -> None:
    write(target / "a", b"x")
    os.link(target / "a", target / "b")
    os.rename(target / "a", target / "b")
    assert sorted(os.listdir(target.root)) == ["a", "b"]
    assert os.stat(target / "a").st_nlink == 2


def test_rename_directory_rules(target: Target) -> None:
    os.makedirs(target / "d" / "e")
    os.mkdir(target / "empty")
    os.mkdir(target / "full")
    write(target / "full" / "x", b"")
    write(target / "f", b"")
    assert err(os.rename, target / "d", target / "d" / "e" / "in") == errno.EINVAL
    assert err(os.rename, target / "d", target / "f") == errno.ENOTDIR
    assert err(os.rename, target / "f", target / "d") == errno.EISDIR
    assert err(os.rename, target / "d", target / "full") == errno.ENOTEMPTY
    assert err(os.rename, target / "nope", target / "x") == errno.ENOENT
    assert err(os.rename, target / "f", target / "nope" / "x") == errno.ENOENT
    os.rename(target / "d", target / "empty")
    assert os.listdir(target / "empty") == ["e"]
    n = os.stat(target.root).st_nlink
    os.rename(target / "empty" / "e", target / "e2")
    assert os.stat(target.root).st_nlink == n + 1
    assert os.stat(target / "empty").st_nlink == 2
    with RawDir(target / "e2") as d:
        dotdot = {name: ino for name, ino, _ in d.read()}[b".."]
    assert dotdot == os.stat(target.root).st_ino


def test_rename_marks_ctime_and_parent_mtimes(target: Target) -> None:
    os.mkdir(target / "a")
    os.mkdir(target / "b")
    write(target / "a" / "f", b"")
    c0 = os.stat(target / "a" / "f").st_ctime_ns
    age(target / "a")
    age(target / "b")
    time.sleep(0.02)
    os.rename(target / "a" / "f", target / "b" / "g")
    assert os.stat(target / "b" / "g").st_ctime_ns > c0
    assert mtime_changed(target / "a") and mtime_changed(target / "b")


def test_renameat2_noreplace(target: Target) -> None:
    write(target / "a", b"A")
    write(target / "b", b"B")
    assert err(renameat2, target / "a", target / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert read(target / "b") == b"B"
    renameat2(target / "a", target / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(target.root)) == ["b", "c"]


def test_renameat2_exchange(target: Target) -> None:
    write(target / "f", b"file")
    os.makedirs(target / "p" / "d")
    write(target / "p" / "d" / "inner", b"")
    ino_f, ino_d = os.stat(target / "f").st_ino, os.stat(target / "p" / "d").st_ino
    n_root, n_p = os.stat(target.root).st_nlink, os.stat(target / "p").st_nlink
    c_f = os.stat(target / "f").st_ctime_ns
    time.sleep(0.02)
    renameat2(target / "f", target / "p" / "d", RENAME_EXCHANGE)
    assert os.stat(target / "f").st_ino == ino_d and os.listdir(target / "f") == ["inner"]
    assert os.stat(target / "p" / "d").st_ino == ino_f
    assert read(target / "p" / "d") == b"file"
    assert os.stat(target.root).st_nlink == n_root + 1
    assert os.stat(target / "p").st_nlink == n_p - 1
    assert os.stat(target / "p" / "d").st_ctime_ns > c_f
    assert err(renameat2, target / "f", target / "nope", RENAME_EXCHANGE) == errno.ENOENT
    assert (
        err(renameat2, target / "f", target / "x", RENAME_EXCHANGE | RENAME_NOREPLACE)
        == errno.EINVAL
    )
    target.remount()
    assert read(target / "p" / "d") == b"file" and os.listdir(target / "f") == ["inner"]


def test_rename_across_file_systems_is_exdev(target: Target) -> None:
    other = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    if os.stat(other).st_dev == os.stat(target.root).st_dev:
        other = Path("/proc/self")
    write(target / "f", b"")
    dest = other / f"wdfs-exdev-{os.getpid()}"
    try:
        assert err(os.rename, target / "f", dest) == errno.EXDEV
        assert err(os.link, target / "f", dest) == errno.EXDEV
    finally:
        if dest.exists():
            dest.unlink()


# ================================================================================================
# link(2), symlink(2), readlink(2)
# ================================================================================================
def test_hard_links(target: Target) -> None:
    write(target / "a", b"shared")
    os.mkdir(target / "d")
    c0 = os.stat(target / "a").st_ctime_ns
    time.sleep(0.02)
    os.link(target / "a", target / "d" / "b")
    a, b = os.stat(target / "a"), os.stat(target / "d" / "b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2 and a.st_ctime_ns > c0
    with open(target / "d" / "b", "ab") as f:
        f.write(b"!")
    assert read(target / "a") == b"shared!"
    assert err(os.link, target / "a", target / "d" / "b") == errno.EEXIST
    assert err(os.link, target / "d", target / "dlink") == errno.EPERM
    assert err(os.link, target / "nope", target / "x") == errno.ENOENT
    os.unlink(target / "a")
    assert os.stat(target / "d" / "b").st_nlink == 1
    target.remount()
    assert read(target / "d" / "b") == b"shared!"


def test_link_count_of_many_links(target: Target) -> None:
    write(target / "f", b"")
    for i in range(20):
        os.link(target / "f", target / f"l{i}")
    assert os.stat(target / "f").st_nlink == 21
    for i in range(0, 20, 2):
        os.unlink(target / f"l{i}")
    assert os.stat(target / "l1").st_nlink == 11


def test_symlinks(target: Target) -> None:
    os.symlink("../some/where/far", target / "l")
    assert os.readlink(target / "l") == "../some/where/far"
    assert os.lstat(target / "l").st_size == len("../some/where/far")
    assert err(os.stat, target / "l") == errno.ENOENT
    write(target / "f", b"")
    assert err(os.readlink, target / "f") == errno.EINVAL
    assert err(os.symlink, "x", target / "f") == errno.EEXIST
    assert err(os.symlink, "", target / "empty") == errno.ENOENT
    long_target = "t" * 4000
    os.symlink(long_target, target / "long")
    assert os.readlink(target / "long") == long_target
    os.symlink(b"\xff\xfebin\x01", os.fsencode(target / "bin"))
    assert os.readlink(os.fsencode(target / "bin")) == b"\xff\xfebin\x01"
    os.mkdir(target / "d")
    os.symlink("d", target / "dl")
    write(target / "dl" / "inner", b"via link")
    assert read(target / "d" / "inner") == b"via link"


# ================================================================================================
# mknod(2): FIFOs, sockets, devices
# ================================================================================================
def test_fifo(target: Target) -> None:
    os.mkfifo(target / "p", 0o600)
    assert stat.S_ISFIFO(os.stat(target / "p").st_mode)
    r = os.open(target / "p", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(target / "p", os.O_WRONLY)
    os.write(w, b"through the fifo")
    assert os.read(r, 100) == b"through the fifo"
    os.close(r)
    os.close(w)
    target.remount()
    assert stat.S_ISFIFO(os.stat(target / "p").st_mode)


def test_unix_socket(target: Target) -> None:
    old = os.getcwd()
    os.chdir(target.root)
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("sock")
        srv.listen(1)
        assert stat.S_ISSOCK(os.stat("sock").st_mode)
        cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cli.connect("sock")
        conn, _ = srv.accept()
        cli.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for s in (conn, cli, srv):
            s.close()
        assert err(srv.bind, "sock") != 0
        bind2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        assert err(bind2.bind, "sock") == errno.EADDRINUSE
        bind2.close()
    finally:
        os.chdir(old)


def test_device_nodes(target: Target) -> None:
    os.mknod(target / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(target / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.mknod(target / "reg", stat.S_IFREG | 0o644)
    st = os.stat(target / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.stat(target / "blk").st_mode)
    assert os.stat(target / "blk").st_rdev == os.makedev(7, 200)
    assert stat.S_ISREG(os.stat(target / "reg").st_mode)
    assert err(os.mknod, target / "null", stat.S_IFCHR | 0o666, 0) == errno.EEXIST
    code = err(lambda: os.close(os.open(target / "null", os.O_WRONLY)))
    assert code == differs(target, "nodev", 0, errno.EACCES)


# ================================================================================================
# extended attributes
# ================================================================================================
def test_xattr_set_get_list_remove(target: Target) -> None:
    write(target / "f", b"")
    value = bytes(range(256)) + b"\0\0"
    os.setxattr(target / "f", "user.bin", value)
    os.setxattr(target / "f", "user.empty", b"")
    assert os.getxattr(target / "f", "user.bin") == value
    assert os.getxattr(target / "f", "user.empty") == b""
    assert sorted(os.listxattr(target / "f")) == ["user.bin", "user.empty"]
    assert err(os.getxattr, target / "f", "user.nope") == errno.ENODATA
    os.removexattr(target / "f", "user.bin")
    assert err(os.removexattr, target / "f", "user.bin") == errno.ENODATA
    assert os.listxattr(target / "f") == ["user.empty"]
    os.setxattr(target / "f", "user.empty", b"now full")
    target.remount()
    assert os.getxattr(target / "f", "user.empty") == b"now full"


def test_xattr_create_and_replace_flags(target: Target) -> None:
    write(target / "f", b"")
    os.setxattr(target / "f", "user.a", b"1", os.XATTR_CREATE)
    assert err(os.setxattr, target / "f", "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert err(os.setxattr, target / "f", "user.b", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(target / "f", "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(target / "f", "user.a") == b"3"
    assert os.listxattr(target / "f") == ["user.a"]


def test_xattr_sizes_and_erange(target: Target) -> None:
    write(target / "f", b"")
    os.setxattr(target / "f", "user.v", b"0123456789")
    assert getxattr_size(target / "f", b"user.v", 0) == 10
    assert err(getxattr_size, target / "f", b"user.v", 5) == errno.ERANGE
    assert getxattr_size(target / "f", b"user.v", 10) == 10
    assert listxattr_size(target / "f", 0) == len(b"user.v\0")
    assert err(listxattr_size, target / "f", 3) == errno.ERANGE
    assert err(os.setxattr, target / "f", "user." + "n" * 251, b"") == errno.ERANGE
    os.setxattr(target / "f", "user." + "n" * 250, b"x")
    assert err(os.setxattr, target / "f", "user.big", b"x" * (64 * KiB + 1)) == errno.E2BIG
    assert err(os.setxattr, target / "f", "user.", b"x") == errno.EINVAL
    assert err(os.setxattr, target / "f", "bogus.name", b"x") == errno.EOPNOTSUPP
    assert err(os.getxattr, target / "f", "bogus.name") == errno.EOPNOTSUPP


def test_xattr_space_per_inode(target: Target) -> None:
    write(target / "f", b"")
    os.setxattr(target / "f", "user.mid", b"m" * 2000)
    code = err(os.setxattr, target / "f", "user.large", b"l" * 10_000)
    assert code == differs(target, "xattr_space", errno.ENOSPC, 0)


def test_xattr_namespaces_as_root(target: Target) -> None:
    write(target / "f", b"")
    os.setxattr(target / "f", "trusted.t", b"T")
    os.setxattr(target / "f", "security.s", b"S")
    os.setxattr(target / "f", "user.u", b"U")
    assert sorted(os.listxattr(target / "f")) == ["security.s", "trusted.t", "user.u"]
    assert os.getxattr(target / "f", "trusted.t") == b"T"
    os.chmod(target / "f", 0o666)
    assert as_user(USER_A, lambda: sorted(os.listxattr(target / "f"))) == [
        "security.s",
        "user.u",
    ]
    assert as_user(USER_A, lambda: os.getxattr(target / "f", "user.u")) == b"U"
    assert as_user(USER_A, lambda: os.getxattr(target / "f", "security.s")) == b"S"
    assert as_user(USER_A, lambda: os.setxattr(target / "f", "trusted.x", b"")) == (
        "errno",
        errno.EPERM,
    )
    assert as_user(USER_A, lambda: os.setxattr(target / "f", "security.x", b"")) == (
        "errno",
        errno.EPERM,
    )
    assert as_user(USER_A, lambda: os.setxattr(target / "f", "user.x", b"ok")) is None


def test_xattr_permissions_follow_the_mode(target: Target) -> None:
    write(target / "f", b"", 0o600)
    os.setxattr(target / "f", "user.secret", b"s")
    assert as_user(USER_A, lambda: os.getxattr(target / "f", "user.secret")) == (
        "errno",
        errno.EACCES,
    )
    assert as_user(USER_A, lambda: os.setxattr(target / "f", "user.y", b"")) == (
        "errno",
        errno.EACCES,
    )


def test_xattr_on_other_file_types(target: Target) -> None:
    os.mkdir(target / "d")
    os.setxattr(target / "d", "user.dir", b"on a directory")
    assert os.getxattr(target / "d", "user.dir") == b"on a directory"
    os.symlink("d", target / "l")
    assert err(os.setxattr, target / "l", "user.x", b"", follow_symlinks=False) == errno.EPERM
    os.setxattr(target / "l", "trusted.x", b"link", follow_symlinks=False)
    assert os.getxattr(target / "l", "trusted.x", follow_symlinks=False) == b"link"
    assert err(os.getxattr, target / "l", "trusted.x") == errno.ENODATA
    os.mkfifo(target / "p")
    assert err(os.setxattr, target / "p", "user.x", b"") == errno.EPERM
    assert err(os.getxattr, target / "p", "user.x") == errno.ENODATA


def test_xattr_follows_the_inode(target: Target) -> None:
    write(target / "f", b"")
    os.setxattr(target / "f", "user.k", b"v")
    os.link(target / "f", target / "hard")
    os.rename(target / "f", target / "moved")
    assert os.getxattr(target / "hard", "user.k") == b"v"
    assert os.getxattr(target / "moved", "user.k") == b"v"
    os.unlink(target / "hard")
    os.unlink(target / "moved")
    write(target / "f", b"")
    assert os.listxattr(target / "f") == [], "a new file does not inherit old attributes"


def test_xattr_changes_ctime_not_mtime(target: Target) -> None:
    write(target / "f", b"")
    age(target / "f")
    c0 = os.stat(target / "f").st_ctime_ns
    time.sleep(0.02)
    os.setxattr(target / "f", "user.a", b"1")
    st = os.stat(target / "f")
    assert st.st_ctime_ns > c0 and not mtime_changed(target / "f")
    time.sleep(0.02)
    os.removexattr(target / "f", "user.a")
    assert os.stat(target / "f").st_ctime_ns > st.st_ctime_ns


def test_posix_acl_xattr(target: Target) -> None:
    write(target / "f", b"")
    code = err(os.getxattr, target / "f", "system.posix_acl_access")
    assert code == differs(target, "posix_acl", errno.ENODATA, errno.EOPNOTSUPP)


# ================================================================================================
# statfs(2)
# ================================================================================================
def test_statvfs_reports_real_figures(target: Target) -> None:
    s = os.statvfs(target.root)
    assert s.f_namemax == 255
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert s.f_blocks >= s.f_bfree >= s.f_bavail > 0
    assert s.f_files >= s.f_ffree > 0
    if target.is_mount:
        disk = os.statvfs(target.proc.logdir)  # type: ignore[union-attr]
        ours, theirs = s.f_bavail * s.f_frsize, disk.f_bavail * disk.f_frsize
        assert abs(ours - theirs) < 0.05 * theirs + 64 * MiB, "free space is the log's disk"
        used_before = s.f_files - s.f_ffree
        for i in range(10):
            write(target / f"f{i}", b"")
        s2 = os.statvfs(target.root)
        assert s2.f_files - s2.f_ffree == used_before + 10


# ================================================================================================
# the list of differences is documented
# ================================================================================================
def test_every_difference_is_documented() -> None:
    doc = (ROOT / "docs" / "conformance.md").read_text()
    missing = [key for key in DIFFERENCES if f"`{key}`" not in doc]
    assert not missing, f"docs/conformance.md does not explain: {missing}"
