"""What the file system operations take and return: attributes (``Attr``), file system figures
(``StatFs``), attribute changes (``SetAttr``), and the flag numbers of rename, fallocate, lseek
and copy_file_range as the kernel passes them. Split out of application/filesystem.py (issue
13); re-exported there."""

from __future__ import annotations

from dataclasses import dataclass

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
COPY_CHUNK = 16 * 1024 * 1024  # the most one copy_file_range call moves (callers loop)


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blksize: int
    blocks: int = 0  # 512-byte units actually stored (holes and sparse tails do not count)


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int


@dataclass(slots=True)
class SetAttr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
