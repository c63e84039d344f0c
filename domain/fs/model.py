"""The file tree as objects of the chain.

* An **inode** object holds a file's attributes (``InodeData``); its key is its inode number
  (the root directory is key 1). Inodes are children of the root in collection ``INODES``.
* A **dentry** object names an inode inside a directory (``DentryData``); it is a child of the
  directory in collection ``DENTRIES``. Hard links are several dentries of one inode.
* A **page** object holds ``page_size`` bytes of a file; it is a child of the inode in collection
  ``PAGES`` and carries ``Chunk(index)``. Its key is derived from (inode, index). Missing pages
  are holes (zeros).
* An **xattrs** object holds every extended attribute of one inode (``XattrData``); it is a
  child of the inode in collection ``XATTRS``, its key derived from (inode, ``XATTR_SLOT``). It
  exists only while the inode has extended attributes, and is written only when they change.

All four kinds keep their content in the event's data, which is encrypted: names, modes, link
targets, attribute names and values and file bytes never appear in clear metadata.

Upcasting rule for these payloads: they are positional (``array_like``) msgspec structs, so a
field may only be added at the END and with a default; an old payload (a shorter array) then
decodes with the default. Fields are never removed, reordered or retyped.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

import msgspec

ROOT_INO = 1
COLL_INODES = 1
COLL_DENTRIES = 2
COLL_PAGES = 3
COLL_XATTRS = 4

TYPE_INODE = "inode"
TYPE_DENTRY = "dentry"
TYPE_PAGE = "page"
TYPE_XATTRS = "xattrs"
TYPE_CHAIN_KEY = "chain-key"

NAME_MAX = 255
DEFAULT_PAGE_SIZE = 32 * 1024

#: The "page index" from which an inode's xattrs object key is derived: no page can have it.
XATTR_SLOT = (1 << 64) - 1
XATTR_NAME_MAX = 255  # Linux XATTR_NAME_MAX
XATTR_SIZE_MAX = 65536  # Linux XATTR_SIZE_MAX: the largest value
XATTR_LIST_MAX = 65536  # Linux XATTR_LIST_MAX: all names of one inode, NUL-terminated
XATTR_TOTAL_MAX = 256 * 1024  # names and values of one inode together (ext4: one block)
#: Namespaces stored as given. ``system.`` (POSIX ACLs) is not supported: EOPNOTSUPP, as ext4
#: mounted with ``noacl``.
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
XATTR_CREATE = 1
XATTR_REPLACE = 2


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


class XattrData(msgspec.Struct, frozen=True, array_like=True):
    """Every extended attribute of one inode, as (name, value) pairs in the order they were
    first set (a list, not a map: JSON cannot key by bytes)."""

    entries: list[tuple[bytes, bytes]] = []


def check_xattr_name(name: bytes) -> None:
    """EOPNOTSUPP for namespaces we do not store, EINVAL for an empty name in a namespace,
    ERANGE for names longer than Linux allows (the kernel checks that first)."""
    if len(name) > XATTR_NAME_MAX or not name:
        raise FsError(errno.ERANGE)
    for ns in XATTR_NAMESPACES:
        if name.startswith(ns):
            if len(name) == len(ns):
                raise FsError(errno.EINVAL, f"empty attribute name in {ns!r}")
            return
    raise FsError(errno.EOPNOTSUPP, f"xattr namespace of {name!r} is not supported")


def xattr_set(
    current: dict[bytes, bytes], name: bytes, value: bytes, flags: int
) -> dict[bytes, bytes]:
    """The attributes after ``setxattr(name, value, flags)``, or the errno ext4 gives."""
    check_xattr_name(name)
    if len(value) > XATTR_SIZE_MAX:
        raise FsError(errno.E2BIG)
    exists = name in current
    if flags & XATTR_CREATE and exists:
        raise FsError(errno.EEXIST)
    if flags & XATTR_REPLACE and not exists:
        raise FsError(errno.ENODATA)
    new = dict(current)
    new[name] = value
    if sum(len(n) + 1 for n in new) > XATTR_LIST_MAX:
        raise FsError(errno.ENOSPC, "too many extended attribute names")
    if sum(len(n) + len(v) for n, v in new.items()) > XATTR_TOTAL_MAX:
        raise FsError(errno.ENOSPC, "extended attributes too large")
    return new


@dataclass(frozen=True, slots=True)
class IdMap:
    """How stored owners appear on this machine, and how local owners are stored (the mount's
    ``--uid``, ``--gid`` and ``--impersonate-uid``).

    * ``uid``/``gid`` (like sshfs ``-o uid=,gid=``): every file appears owned by them; what is
      stored does not change.
    * ``local`` (``--impersonate-uid``): the mounting user's local (uid, gid). Until users exist,
      the *global* id of the authenticated user (the passcode holder, who owns the file system)
      is the owner of the root directory, a value kept in the chain and the same on every
      machine. Files with the global owner appear owned by the local ids; files the local user
      creates or chowns to the local ids are stored with the global ones.
    """

    uid: int | None = None
    gid: int | None = None
    local: tuple[int, int] | None = None

    @property
    def active(self) -> bool:
        return self.uid is not None or self.gid is not None or self.local is not None

    def show(self, uid: int, gid: int, owner: tuple[int, int]) -> tuple[int, int]:
        """Stored (uid, gid) -> as shown, given the global owner (root's stored ids)."""
        if self.local is not None:
            if uid == owner[0]:
                uid = self.local[0]
            if gid == owner[1]:
                gid = self.local[1]
        return (
            self.uid if self.uid is not None else uid,
            self.gid if self.gid is not None else gid,
        )

    def store_uid(self, uid: int, owner: tuple[int, int]) -> int:
        """A local uid (of a creator, or given to chown) -> as stored."""
        return owner[0] if self.local is not None and uid == self.local[0] else uid

    def store_gid(self, gid: int, owner: tuple[int, int]) -> int:
        return owner[1] if self.local is not None and gid == self.local[1] else gid


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
