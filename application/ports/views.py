"""Port of the views: emulated files shown inside a mount (issue 18, docs/adr/0019-views.md).

A ``View`` owns one directory of the mount (by default under ``/.wasmer-dfs/``) and answers for
every path below it: what is there (``node``, ``list``), a file's bytes (``read``), and, where it
allows them, writes (``write``) and growing files (``follow``). Paths are tuples of names,
relative to the view's directory (``()`` is the directory itself). A view raises ``FsError`` with
the errno to report (ENOENT, EACCES, EINVAL ...); anything else it raises is a failure of the
view: the reader gets EIO and the mount keeps working (``application.views.ViewService``).

Built-in views: application/views/builtin.py. Twin: the views in tests are small subclasses of
``View`` (tests/unit/test_views.py); the contract: tests/contract/test_view_contract.py."""

from __future__ import annotations

import abc
import enum
import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from application.ports.time import Clock
from domain.fs.model import FsError

#: a path inside a view's directory: names, no "/" (``()``: the directory itself)
ViewPath = tuple[str, ...]


class NodeKind(enum.Enum):
    DIR = "dir"
    #: a file whose bytes are rendered whole when it is opened (its size: their length)
    FILE = "file"
    #: a file that grows while it is read (an access log): size 0, read as a stream
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class ViewNode:
    kind: NodeKind
    #: a FILE: accepts writes; a DIR: accepts new files (``write`` of a path not there yet)
    writable: bool = False


class Stream(abc.ABC):
    """One reader's follow of a growing file (``View.follow``): what happened since it opened."""

    @abc.abstractmethod
    async def read(self, size: int, wait: float) -> bytes:
        """At most ``size`` bytes not read yet; when there are none, waits up to ``wait``
        seconds for some. ``b""`` when none came (the reader sees the end of the file for now,
        as ``tail -f`` expects; it reads again later)."""

    @abc.abstractmethod
    def close(self) -> None:
        """The reader is gone: stop collecting (nothing is kept for nobody)."""


class View(abc.ABC):
    """Port: a directory of emulated files (see the module docstring)."""

    #: the view's name (``mount --view NAME``; in log messages)
    name: str = ""
    #: where the view's directory is, names from the mount's root (None: ``/.wasmer-dfs/NAME``)
    place: ViewPath | None = None

    @abc.abstractmethod
    def node(self, path: ViewPath) -> ViewNode | None:
        """What ``path`` is, or None when there is nothing there. ``()`` must be a DIR."""

    @abc.abstractmethod
    def list(self, path: ViewPath) -> list[str]:
        """The names in directory ``path``, in the order ``ls -f`` shows them."""

    @abc.abstractmethod
    def read(self, path: ViewPath) -> bytes:
        """The whole content of FILE ``path``, rendered now."""

    def write(self, path: ViewPath, data: bytes) -> None:
        """Store ``data`` as the new content of ``path`` (a writable FILE, or a new name in a
        writable DIR); called once, when the writer closes or fsyncs the file. Raise
        ``FsError(EINVAL)`` (or another errno) to refuse the content: the writer's close fails
        with it. By default nothing is writable: EACCES."""
        raise FsError(errno.EACCES, f"{self.name}: {'/'.join(path)} is read-only")

    def stream_size(self, path: ViewPath) -> int:
        """The size STREAM ``path`` shows: the bytes it has produced so far. It must grow by
        what a follower can read next (`tail -f` on a network file system reads as much as
        the size grew, never more). By default 0: a reader reads until the end of the file."""
        return 0

    def follow(self, path: ViewPath) -> Stream:
        """Start following STREAM ``path`` for one reader (called at its open)."""
        raise FsError(errno.EACCES, f"{self.name}: {'/'.join(path)} cannot be followed")


class ViewStore(abc.ABC):
    """Port: the data a view stores, records by key, kept in the chain (docs/adr/0019-views.md).

    A key is a path of names (no "/", not "." or ".."): its last name is the record, the ones
    before it group records (as directories do). What is put is encrypted, signed, replicated
    to the other mounts of the chain and compacted like the files' data. Twin:
    adapters/memory/view_store.py; contract: tests/contract/test_view_store_contract.py."""

    @abc.abstractmethod
    def get(self, key: ViewPath) -> bytes | None:
        """The record at ``key``, or None when there is none."""

    @abc.abstractmethod
    def put(self, key: ViewPath, data: bytes) -> None:
        """Store ``data`` as the record at ``key`` (replacing one there)."""

    @abc.abstractmethod
    def delete(self, key: ViewPath) -> bool:
        """Remove the record at ``key``; False when there was none."""

    @abc.abstractmethod
    def names(self, prefix: ViewPath = ()) -> list[str]:
        """The names directly under ``prefix`` (records and groups), sorted; [] for none."""


def check_key(key: ViewPath) -> None:
    """``FsError(EINVAL)`` for a key that is not a path of names."""
    if not key or any(not n or "/" in n or "\0" in n or n in (".", "..") for n in key):
        raise FsError(errno.EINVAL, f"bad key {'/'.join(key)!r}")


@dataclass(frozen=True, slots=True)
class ViewContext:
    """What a view's factory is given (``mount --view NAME[=ARG]``): a store by name (one name
    per kind of data: views that share data, such as records and their index, share the name),
    the mount's clock, and whether the mount is read-only."""

    store: Callable[[str], ViewStore]
    clock: Clock
    read_only: bool = False


#: a view's factory, as the ``wasmer_dfs.views`` entry points name them: (ARG or None, context)
#: -> the view, or several views (each at its ``place``)
ViewFactory = Callable[[str | None, ViewContext], "View | Sequence[View]"]
