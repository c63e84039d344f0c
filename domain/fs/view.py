"""The materialised file tree: a pure fold of inode, dentry and page events.

Lookups are dictionary lookups (never linear in directory size); page data stays wherever the
locator says (on disk), the view holds only locators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domain.fs.model import ROOT_INO, DentryData, InodeData


def conflict_name(name: bytes, dentry: int) -> bytes:
    """The name under which an entry that lost its name to a concurrent one is shown:
    ``NAME.conflict-KEY`` (the dentry's key in hex; the name cut to keep 255 bytes)."""
    suffix = b".conflict-" + f"{dentry:016x}".encode()
    return name[: 255 - len(suffix)] + suffix


def _stored_size(locator: Any) -> int:
    """The length of a page's data from its locator ``(where, meta hash)``; ``where`` has a
    ``length`` (a log's data reference), or is its array form ``[offset, length, ...]`` (as a
    checkpoint gives it back)."""
    if locator is None:
        return 0
    where = locator[0] if isinstance(locator, tuple | list) else locator
    length = getattr(where, "length", None)
    if length is None and isinstance(where, list | tuple) and len(where) > 1:
        length = where[1]
    return length if isinstance(length, int) else 0


@dataclass(slots=True)
class Entry:
    dentry: int
    inode: int


@dataclass(slots=True)
class FsView:
    inodes: dict[int, InodeData] = field(default_factory=dict)
    #: directory inode -> name -> entry
    dirs: dict[int, dict[bytes, Entry]] = field(default_factory=dict)
    #: dentry key -> (directory, name, inode)
    dentries: dict[int, tuple[int, bytes, int]] = field(default_factory=dict)
    #: inode -> number of dentries naming it
    links: dict[int, int] = field(default_factory=dict)
    #: directory -> number of sub-directories (for nlink)
    subdirs: dict[int, int] = field(default_factory=dict)
    #: inode -> page index -> locator of the page's data
    pages: dict[int, dict[int, Any]] = field(default_factory=dict)
    #: directory -> the directory that names it
    dir_parent: dict[int, int] = field(default_factory=dict)
    #: inode -> extended attribute name -> value (only inodes that have any)
    xattrs: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    #: directory -> name -> dentry keys of that name shown under a conflict name (concurrent
    #: creations on two replicas; see ``put_dentry``)
    shadowed: dict[int, dict[bytes, list[int]]] = field(default_factory=dict)
    #: bytes of page data the live pages take in the log (what a compaction must keep)
    page_bytes: int = 0

    # -- queries -------------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Entry | None:
        d = self.dirs.get(parent)
        return d.get(name) if d is not None else None

    def nlink(self, ino: int) -> int:
        data = self.inodes.get(ino)
        if data is not None and data.is_dir:
            if ino != ROOT_INO and ino not in self.links:
                return 0  # removed, still in use
            return 2 + self.subdirs.get(ino, 0)
        return self.links.get(ino, 0)

    def parent_of(self, directory: int) -> int | None:
        """The directory containing ``directory`` (directories have exactly one dentry)."""
        return self.dir_parent.get(directory)

    # -- fold ----------------------------------------------------------------------------------
    def put_inode(self, key: int, data: InodeData) -> None:
        old = self.inodes.get(key)
        self.inodes[key] = data
        if data.is_dir and key not in self.dirs:
            self.dirs[key] = {}
        if old is not None and old.is_dir and not data.is_dir:
            self.dirs.pop(key, None)

    def delete_inode(self, key: int) -> None:
        self.inodes.pop(key, None)
        self.dirs.pop(key, None)
        for locator in self.pages.pop(key, {}).values():
            self.page_bytes -= _stored_size(locator)
        self.links.pop(key, None)
        self.subdirs.pop(key, None)
        self.dir_parent.pop(key, None)
        self.xattrs.pop(key, None)

    def put_dentry(self, key: int, parent: int, data: DentryData) -> None:
        self.delete_dentry(key)
        d = self.dirs.setdefault(parent, {})
        name = data.name
        other = d.get(name)
        if other is not None:
            # Two entries of one name exist only when two replicas created it concurrently (a
            # local rename deletes its target first): the one with the greater key keeps the
            # name, the other is shown under a conflict name until the name is free again -
            # the same on every replica, in whatever order they applied the two, and neither
            # file is lost.
            loser = key if other.dentry > key else other.dentry
            self.shadowed.setdefault(parent, {}).setdefault(data.name, []).append(loser)
            if loser == key:
                name = conflict_name(data.name, key)
            else:
                self._move_entry(parent, data.name, conflict_name(data.name, other.dentry))
        d[name] = Entry(key, data.inode)
        self.dentries[key] = (parent, name, data.inode)
        self.links[data.inode] = self.links.get(data.inode, 0) + 1
        target = self.inodes.get(data.inode)
        if target is not None and target.is_dir:
            self.subdirs[parent] = self.subdirs.get(parent, 0) + 1
            self.dir_parent[data.inode] = parent

    def _move_entry(self, parent: int, old: bytes, new: bytes) -> None:
        d = self.dirs[parent]
        entry = d.pop(old)
        d[new] = entry
        self.dentries[entry.dentry] = (parent, new, entry.inode)

    def delete_dentry(self, key: int) -> None:
        old = self.dentries.pop(key, None)
        if old is None:
            return
        parent, name, ino = old
        d = self.dirs.get(parent)
        freed = False
        if d is not None:
            cur = d.get(name)
            if cur is not None and cur.dentry == key:
                del d[name]
                freed = True
        n = self.links.get(ino, 0) - 1
        if n > 0:
            self.links[ino] = n
        else:
            self.links.pop(ino, None)
        target = self.inodes.get(ino)
        if target is not None and target.is_dir and parent in self.subdirs:
            self.subdirs[parent] -= 1
            if self.dir_parent.get(ino) == parent:
                del self.dir_parent[ino]
        waiting = self.shadowed.get(parent)
        if waiting:
            for original, keys in list(waiting.items()):
                if key in keys:
                    keys.remove(key)  # it was shown under a conflict name
                elif freed and original == name and keys and d is not None:
                    best = max(keys)  # the name is free again: the greatest key takes it
                    keys.remove(best)
                    self._move_entry(parent, self.dentries[best][1], original)
                if not keys:
                    del waiting[original]
            if not waiting:
                del self.shadowed[parent]

    def put_page(self, ino: int, index: int, locator: Any) -> None:
        pages = self.pages.setdefault(ino, {})
        self.page_bytes += _stored_size(locator) - _stored_size(pages.get(index))
        pages[index] = locator

    def put_xattrs(self, ino: int, entries: dict[bytes, bytes]) -> None:
        if entries:
            self.xattrs[ino] = entries
        else:
            self.xattrs.pop(ino, None)

    def delete_page(self, ino: int, index: int) -> None:
        p = self.pages.get(ino)
        if p is not None:
            self.page_bytes -= _stored_size(p.pop(index, None))
