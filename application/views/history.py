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

The versions come from a replay of the whole log (``application.history.versions``): a request
costs a replay (cached until the log grows), done on the mount's event loop."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections import OrderedDict

from application.filesystem import FileSystemService
from application.history import Version, read_version, versions
from application.ports.views import NodeKind, View, ViewNode, ViewPath
from domain.fs.model import ROOT_INO, FsError
from domain.timespec import iso_ms

#: the description of a file's versions, inside its directory of versions
VERSIONS_FILE = ".versions.json"
#: versions' bytes kept rendered (getattr and open both read a file whole)
CACHED_FILES = 16


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

    def __init__(self, fs: FileSystemService) -> None:
        self.fs = fs
        self._versions: OrderedDict[tuple[bytes, ...], list[Version]] = OrderedDict()
        self._files: OrderedDict[tuple[bytes, ...], bytes] = OrderedDict()
        self._at: tuple[int, int] = (0, -1)

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
            found = self._versions[names] = versions(self.fs.session, names)
            if len(self._versions) > 64:
                self._versions.popitem(last=False)
        return found

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
        names = self._names(path)
        if self._live_dir(names):
            return ViewNode(NodeKind.DIR)
        if self._version(path) is not None:
            return ViewNode(NodeKind.FILE)
        return ViewNode(NodeKind.DIR) if self._of(names) else None

    def list(self, path: ViewPath) -> list[str]:
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
