"""The file tree as objects of the chain.

* An **inode** object holds a file's attributes (``InodeData``); its key is its inode number
  (the root directory is key 1). Inodes are children of the root in collection ``INODES``.
* A **dentry** object names an inode inside a directory (``DentryData``); it is a child of the
  directory in collection ``DENTRIES``. Hard links are several dentries of one inode.
* A **page** object holds ``page_size`` bytes of a file; it is a child of the inode in collection
  ``PAGES`` and carries ``Chunk(index)``. Its key is derived from (inode, index). Missing pages
  are holes (zeros).

All three kinds keep their content in the event's data, which is encrypted: names, modes, link
targets and file bytes never appear in clear metadata.
"""

from __future__ import annotations

import errno
import stat

import msgspec

ROOT_INO = 1
COLL_INODES = 1
COLL_DENTRIES = 2
COLL_PAGES = 3

TYPE_INODE = "inode"
TYPE_DENTRY = "dentry"
TYPE_PAGE = "page"
TYPE_CHAIN_KEY = "chain-key"

NAME_MAX = 255
DEFAULT_PAGE_SIZE = 32 * 1024


class FsError(Exception):
    """A file-system error with its errno; the FUSE adapter turns it into the reply."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


class InodeData(msgspec.Struct, frozen=True, array_like=True):
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    target: bytes = b""  # symlink target

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)


class DentryData(msgspec.Struct, frozen=True, array_like=True):
    name: bytes
    inode: int


def check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)


def page_span(offset: int, length: int, page_size: int) -> range:
    """Indices of the pages that bytes [offset, offset + length) touch."""
    if length <= 0:
        return range(0)
    return range(offset // page_size, (offset + length - 1) // page_size + 1)


def pages_for_size(size: int, page_size: int) -> int:
    return (size + page_size - 1) // page_size
