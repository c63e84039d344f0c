"""``/.wasmer-dfs/history/PATH/``: the versions of the file at PATH, one read-only file per
version named by its time (issue 15 part B, issue 18; docs/adr/0023).

* ``history/DIR/`` of a directory of the live tree lists its entries, so the history can be
  walked like the tree; a name that is not there now (a deleted file) is still found by name;
* ``history/PATH/`` of a file (live or deleted) lists its versions: ``2026-12-03T13:50:01.123Z``
  (UTC, the time its transaction was sealed), ``TIME.conflict`` for a version kept in a conflict
  copy beside it, ``TIME-2`` for a second version within one millisecond; reading one gives the
  file's bytes as they were (``cp`` restores it);
* ``history/PATH/.versions.json`` describes them: name, time, size, mode, author (the hash of the
  key that signed the transaction), whether it was a conflict copy. `wasmer-dfs history` and
  `wasmer-dfs restore` read it.

* ``history/@TIME/`` is the tree as it was at TIME (``@`` and ms since the epoch, or an ISO 8601
  time, UTC unless it says otherwise: ``@2026-12-03T13:50:01.123Z``): its directories and regular
  files, read-only (``cp -r`` copies it); ``history/@TIME.json`` lists that whole tree (path,
  type, mode, size, a symlink's target), which `wasmer-dfs restore --recursive` reads. A name of
  the live root that reads as such a time is shadowed here.

On a mount of the past (``mount --as-of``) all of it stops at the mount's own time: no version
and no tree after it.

The versions come from a replay of the log (``application.history.versions``): a request
costs a replay (cached until the log grows), done on the mount's event loop; a tree at a time
is replayed once and kept (the last ``CACHED_TREES``) while the log is not replaced (a
compaction replaces it): the prefix a time names does not change when the log grows."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import stat
from collections import OrderedDict

from application.filesystem import FileSystemService
from application.history import Cut, PastError, PastTree, Version, read_version, tree_at, versions
from application.ports.views import NodeKind, View, ViewNode, ViewPath
from domain.fs.model import ROOT_INO, FsError
from domain.timespec import iso_ms

#: the description of a file's versions, inside its directory of versions
VERSIONS_FILE = ".versions.json"
#: versions' bytes kept rendered (getattr and open both read a file whole)
CACHED_FILES = 16
#: trees at a time kept replayed
CACHED_TREES = 2
#: the suffix of a tree's listing, ``@TIME.json``
TREE_LISTING = ".json"


def past_ms(name: str) -> int | None:
    """The time ``@TIME`` names (ms since the epoch), None when ``name`` is not one."""
    if not name.startswith("@") or len(name) < 2:
        return None
    text = name[1:]
    if text.isdigit():
        return int(text)
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


def tree_listing(tree: PastTree, as_of_ms: int) -> dict[str, object]:
    """``@TIME.json``: the tree at a time, parents before their entries."""
    entries: list[dict[str, object]] = []
    for names, data in tree.walk():
        kind = (
            "dir" if data.is_dir else "file" if data.is_reg else "symlink" if data.is_link
            else "other"
        )  # fmt: skip
        entry: dict[str, object] = {
            "path": "/".join(os.fsdecode(n) for n in names),
            "type": kind,
            "mode": f"{stat.S_IMODE(data.mode):o}",
        }
        if data.is_reg:
            entry["size"] = data.size
        if data.is_link:
            entry["target"] = os.fsdecode(data.target)
        entries.append(entry)
    return {
        "as_of": iso_ms(as_of_ms),
        "last_transaction": iso_ms(tree.cut.at_ms),
        "transactions": tree.cut.transactions,
        "oldest": iso_ms(tree.cut.oldest_ms),
        "entries": entries,
    }


def version_names(found: list[Version]) -> list[str]:
    """The file name of each version: its time, ``.conflict`` for a conflict copy's, ``-N``
    for the N-th of one name."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for v in found:
        base = iso_ms(v.ms) + (".conflict" if v.conflict else "")
        n = seen[base] = seen.get(base, 0) + 1
        names.append(base if n == 1 else f"{base}-{n}")
    return names


def describe(found: list[Version]) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "time": iso_ms(v.ms),
            "ms": v.ms,
            "size": v.size,
            "mode": f"{stat.S_IMODE(v.mode):o}",
            "author": v.author,
            "conflict": v.conflict,
            "as": os.fsdecode(v.name),
        }
        for name, v in zip(version_names(found), found, strict=True)
    ]


class HistoryView(View):
    """The versions of the mount's files (see the module docstring)."""

    name = "history"

    def __init__(self, fs: FileSystemService, as_of: Cut | None = None) -> None:
        self.fs = fs
        #: a mount of the past: only its first transactions are history (None: all)
        self.limit = as_of.transactions if as_of is not None else None
        self._versions: OrderedDict[tuple[bytes, ...], list[Version]] = OrderedDict()
        self._files: OrderedDict[tuple[bytes, ...], bytes] = OrderedDict()
        self._at: tuple[int, int] = (0, -1)
        self._trees: OrderedDict[int, PastTree | None] = OrderedDict()
        self._trees_of = 0

    # -- the past, cached until the log changes ----------------------------------------------------
    def _fresh(self) -> None:
        session = self.fs.session
        if not session.log_closed:
            self.fs.flush_all()  # what was written and not sealed yet is a version too
            session.commit()
        at = (id(session.log), session.log.committed_end)
        if at != self._at:
            self._at = at
            self._versions.clear()
            self._files.clear()

    def _of(self, names: tuple[bytes, ...]) -> list[Version]:
        self._fresh()
        found = self._versions.get(names)
        if found is None:
            found = self._versions[names] = versions(self.fs.session, names, self.limit)
            if len(self._versions) > 64:
                self._versions.popitem(last=False)
        return found

    def _tree(self, ms: int) -> PastTree | None:
        """The tree at ``ms`` (None: the log holds nothing that early)."""
        self._fresh()
        log = id(self.fs.session.log)
        if log != self._trees_of:
            self._trees_of = log
            self._trees.clear()
        if ms not in self._trees:
            try:
                self._trees[ms] = tree_at(self.fs.session, ms, self.limit)
            except PastError:
                self._trees[ms] = None
            if len(self._trees) > CACHED_TREES:
                self._trees.popitem(last=False)
        return self._trees[ms]

    def _past(self, path: ViewPath) -> tuple[PastTree, int, int | None] | None:
        """(the tree, the time, the inode ``path`` names in it; None: the listing) when
        ``path`` lies in ``@TIME/`` or is ``@TIME.json``; None when it is not such a path.
        ENOENT when the tree or the inode is not there."""
        first = path[0] if path else ""
        listing = first.endswith(TREE_LISTING) and len(path) == 1
        ms = past_ms(first[: -len(TREE_LISTING)] if listing else first)
        if ms is None:
            return None
        tree = self._tree(ms)
        if tree is None:
            raise FsError(errno.ENOENT)
        if listing:
            return tree, ms, None
        ino = tree.resolve(self._names(path[1:]))
        data = tree.view.inodes.get(ino) if ino is not None else None
        if ino is None or data is None or not (data.is_dir or data.is_reg):
            raise FsError(errno.ENOENT)
        return tree, ms, ino

    def _live(self, names: tuple[bytes, ...]) -> int | None:
        view = self.fs.view
        ino = ROOT_INO
        for name in names:
            entry = view.lookup(ino, name)
            if entry is None:
                return None
            ino = entry.inode
        return ino

    def _live_dir(self, names: tuple[bytes, ...]) -> bool:
        ino = self._live(names)
        data = self.fs.view.inodes.get(ino) if ino is not None else None
        return data is not None and data.is_dir

    @staticmethod
    def _names(path: ViewPath) -> tuple[bytes, ...]:
        return tuple(n.encode("utf-8", "surrogateescape") for n in path)

    def _version(self, path: ViewPath) -> tuple[list[Version], int] | None:
        """(versions of the file, index) when ``path`` names a version file, index -1 for
        the description."""
        if not path:
            return None
        parent = self._names(path[:-1])
        if not parent or self._live_dir(parent):
            return None
        found = self._of(parent)
        if not found:
            return None
        if path[-1] == VERSIONS_FILE:
            return found, -1
        names = version_names(found)
        return (found, names.index(path[-1])) if path[-1] in names else None

    # -- the port ----------------------------------------------------------------------------------
    def node(self, path: ViewPath) -> ViewNode | None:
        try:
            past = self._past(path)
        except FsError:
            return None
        if past is not None:
            tree, _, ino = past
            is_dir = ino is not None and tree.view.inodes[ino].is_dir
            return ViewNode(NodeKind.DIR if is_dir else NodeKind.FILE)
        names = self._names(path)
        if self._live_dir(names):
            return ViewNode(NodeKind.DIR)
        if self._version(path) is not None:
            return ViewNode(NodeKind.FILE)
        return ViewNode(NodeKind.DIR) if self._of(names) else None

    def list(self, path: ViewPath) -> list[str]:
        past = self._past(path)
        if past is not None:
            tree, _, ino = past
            if ino is None or not tree.view.inodes[ino].is_dir:
                raise FsError(errno.ENOTDIR)
            shown = []
            for name in tree.entries(ino):
                entry = tree.view.lookup(ino, name)
                data = tree.view.inodes.get(entry.inode) if entry is not None else None
                if data is not None and (data.is_dir or data.is_reg):
                    shown.append(os.fsdecode(name))
            return shown
        names = self._names(path)
        if self._live_dir(names):
            ino = self._live(names)
            entries = self.fs.view.dirs.get(ino if ino is not None else ROOT_INO, {})
            return sorted(os.fsdecode(n) for n in entries)
        found = self._of(names)
        if not found:
            raise FsError(errno.ENOENT)
        return [VERSIONS_FILE, *version_names(found)]

    def read(self, path: ViewPath) -> bytes:
        past = self._past(path)
        if past is not None:
            tree, ms, ino = past
            if ino is None:
                return (json.dumps(tree_listing(tree, ms), indent=1) + "\n").encode()
            if tree.view.inodes[ino].is_dir:
                raise FsError(errno.EISDIR)
            key = self._names(path)
            data = self._files.get(key)
            if data is None:
                data = self._files[key] = tree.read(ino)
                if len(self._files) > CACHED_FILES:
                    self._files.popitem(last=False)
            return data
        got = self._version(path)
        if got is None:
            raise FsError(errno.EISDIR if self.node(path) is not None else errno.ENOENT)
        found, i = got
        if i < 0:
            return (json.dumps(describe(found), indent=1) + "\n").encode()
        key = self._names(path)
        data = self._files.get(key)
        if data is None:
            data = self._files[key] = read_version(self.fs.session, found[i])
            if len(self._files) > CACHED_FILES:
                self._files.popitem(last=False)
        return data
