"""The past the log still holds (issue 15, docs/adr/0023): the tree as it was at a time (time
travel) and the versions of one file (history, restore).

Both are replays. A transaction's *time* is its seal's ``Timestamp`` (the writer's clock when
it sealed it; a seal without one takes the time of the transaction before it). Time travel
replays the committed transactions up to the last one whose time is at most the time asked for
(a prefix of the log: a later transaction may depend on an earlier one, so none is skipped). A
time before the first transaction the log holds is refused with that oldest time.

The history of a path replays the whole log into a tree of its own (a ``ChainSession`` over the
same log, read only, with a fresh index and ``FsIndexer``) and, after each transaction, looks at
what the path names: a new version is recorded whenever the regular file there (its inode, size
or modification time) changed. Files named ``NAME.conflict-...`` beside it (the conflict copies
of replication, docs/adr/0009) are versions of it too, marked as such. A version keeps the page
locators of that moment, so its bytes are read from the log on demand.

Compaction drops superseded versions (docs/adr/0007): what a compacted log no longer holds is not
reachable. Until the history window of part A (``--keep-history``) exists, a compacted log's
oldest time is the compaction's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from application.fs.indexer import FsIndexer
from application.session import ChainSession, SessionError
from domain.chain import Transaction
from domain.errors import DomainError
from domain.events import Confidentiality, EventHeader, LocalSeal, Signature, Timestamp, Type
from domain.fs.model import ROOT_INO, TYPE_DENTRY, InodeData
from domain.fs.view import FsView
from domain.timespec import iso_ms

#: the infix of a conflict copy's name (application/fs/conflicts.py, domain/fs/view.py)
CONFLICT_INFIX = b".conflict-"


class PastError(SessionError):
    """The past asked for is not in the log (the message says what is)."""


def seal_time(seal: EventHeader) -> int | None:
    """The time (ms since the epoch) a transaction's seal carries (None: none)."""
    ts = seal.find(Timestamp)
    return int(ts.ms) if isinstance(ts, Timestamp) else None


def author_of(seal: EventHeader, session: ChainSession) -> str:
    """Who sealed a transaction: the hash of the signing key (hex); a local seal is the chain's
    root key's (it proves the read key, and only the chain's own mounts seal so); "" when
    neither (a chain without keys)."""
    sig = seal.find(Signature)
    if isinstance(sig, Signature):
        return bytes(sig.public_key_hash).hex()
    if isinstance(seal.find(LocalSeal), LocalSeal) and session.header.root_key_hash is not None:
        return session.header.root_key_hash.hex()
    return ""


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a replay up to a time stops."""

    #: transactions replayed
    transactions: int
    #: the time of the last one replayed
    at_ms: int
    #: the time of the first transaction of the log
    oldest_ms: int


def cut_at(session: ChainSession, as_of_ms: int, limit: int | None = None) -> Cut:
    """How many of the log's committed transactions lie at or before ``as_of_ms`` (a prefix up
    to the last one whose time is at most it), among its first ``limit`` ones (None: all; a
    mount of the past passes its own cut). ``PastError`` when none does."""
    count = cut = 0
    at = oldest = last = None
    for rec in session.log.scan():
        if not rec.commit:
            continue
        if limit is not None and count == limit:
            break
        ms = seal_time(session.parse(rec))
        ms = ms if ms is not None else last
        count += 1
        if oldest is None:
            oldest = ms
        if ms is not None and ms <= as_of_ms:
            cut, at = count, ms
        last = ms
    if count == 0 or oldest is None:
        raise PastError("the log holds no transaction yet: there is no past to mount")
    if cut == 0 or at is None:
        raise PastError(
            f"{iso_ms(as_of_ms)} is before the oldest time this log holds: {iso_ms(oldest)}"
        )
    return Cut(cut, at, oldest)


def replay_until(session: ChainSession, as_of_ms: int) -> Cut:
    """Validate and apply the log's transactions up to ``as_of_ms`` (``cut_at``) into the
    session's (empty) state; returns the cut."""
    cut = cut_at(session, as_of_ms)
    done = 0
    try:
        for tx in session.transactions():
            if done == cut.transactions:
                break
            session.pipeline.accept(session.index, tx)
            done += 1
    except DomainError as exc:
        raise PastError(f"the log fails validation: {exc}") from None
    return cut


# --- versions of one file ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Version:
    """One version of a file: what a transaction left at the path (or at a conflict copy)."""

    ms: int
    size: int
    mode: int
    mtime_ns: int
    author: str
    conflict: bool
    #: the name it had (a conflict copy's own name)
    name: bytes
    ino: int
    #: page index -> (locator, meta hash) at that moment; the object key's confidentiality
    pages: dict[int, Any] = field(repr=False)
    conf: Confidentiality | None = field(default=None, repr=False)


def _resolve(view: FsView, names: tuple[bytes, ...]) -> int | None:
    ino = ROOT_INO
    for name in names:
        entry = view.lookup(ino, name)
        if entry is None:
            return None
        ino = entry.inode
    return ino


def _touches_names(tx: Transaction) -> bool:
    for ev in tx.events:
        typ = ev.header.find(Type)
        if isinstance(typ, Type) and typ.name == TYPE_DENTRY:
            return True
    return False


def _twin(session: ChainSession) -> tuple[ChainSession, FsIndexer]:
    """A session over ``session``'s log (never written) with a fresh index and tree."""
    twin = ChainSession(
        session.log, session.header, session.crypto, session.clock, session.keys.read_key,
        session.formats, keys=session.keys,
    )  # fmt: skip
    indexer = FsIndexer(FsView(), twin)
    twin.add_indexer(indexer)
    return twin, indexer


def _transactions(twin: ChainSession) -> Iterator[Transaction]:
    try:
        yield from twin.transactions()
    except DomainError as exc:
        raise PastError(f"the log cannot be read: {exc}") from None


def versions(
    session: ChainSession, path: tuple[bytes, ...], limit: int | None = None
) -> list[Version]:
    """Every version of the regular file at ``path`` (names from the root) the log holds, and
    of its conflict copies, oldest first. Replays the committed log (read only): all of it, or
    its first ``limit`` transactions (a mount of the past: none after its time)."""
    if not path:
        return []
    twin, indexer = _twin(session)
    view = indexer.view
    out: list[Version] = []
    last: dict[tuple[bool, int], tuple[int, int]] = {}
    conflicts: dict[int, bytes] = {}
    last_ms = 0
    done = 0
    try:
        for tx in _transactions(twin):
            if limit is not None and done == limit:
                break
            done += 1
            twin.pipeline.accept(twin.index, tx)
            ms = seal_time(tx.seal)
            last_ms = ms if ms is not None else last_ms
            if _touches_names(tx):
                conflicts = _conflict_copies(view, path)
            seen: list[tuple[bool, int, bytes]] = []
            ino = _resolve(view, path)
            if ino is not None:
                seen.append((False, ino, path[-1]))
            seen += [(True, c, n) for c, n in conflicts.items()]
            for conflict, i, name in seen:
                data = view.inodes.get(i)
                if data is None or not data.is_reg:
                    continue
                state = (data.size, data.mtime_ns)
                if last.get((conflict, i)) == state:
                    continue
                last[(conflict, i)] = state
                out.append(
                    Version(
                        last_ms,
                        data.size,
                        data.mode,
                        data.mtime_ns,
                        author_of(tx.seal, twin),
                        conflict,
                        name,
                        i,
                        dict(view.pages.get(i, {})),
                        indexer.confs.get(i),
                    )
                )
    except DomainError as exc:
        raise PastError(f"the log fails validation: {exc}") from None
    out.sort(key=lambda v: v.ms)  # stable: the log's order within one millisecond
    return out


def _conflict_copies(view: FsView, path: tuple[bytes, ...]) -> dict[int, bytes]:
    directory = _resolve(view, path[:-1])
    entries = view.dirs.get(directory) if directory is not None else None
    if not entries:
        return {}
    prefix = path[-1] + CONFLICT_INFIX
    return {e.inode: n for n, e in entries.items() if n.startswith(prefix)}


def read_version(session: ChainSession, v: Version) -> bytes:
    """The bytes of version ``v``, read from the log (verified and decrypted)."""
    return _read_pages(session, v.pages, v.conf, v.size)


def _read_pages(
    session: ChainSession, pages: dict[int, Any], conf: Confidentiality | None, size: int
) -> bytes:
    okey = session.object_key(conf) if conf is not None else None
    ps = session.header.page_size
    out = bytearray()
    for idx in range((size + ps - 1) // ps):
        ref = pages.get(idx)
        page = b""
        if ref is not None:
            loc, meta_hash = ref
            page = session.read_sealed(loc, meta_hash, okey)
        out += page[:ps].ljust(ps, b"\0")
    return bytes(out[:size])


# --- the tree at a time (``restore --recursive``) -----------------------------------------------
#: the reserved directory of the mount's views (application/views/service.VIEWS_DIR): not part
#: of the tree a user restores
RESERVED = b".wasmer-dfs"


@dataclass(slots=True)
class PastTree:
    """The tree as it was at a time: a replay of the log's prefix (``cut_at``) into a tree of
    its own; the files' bytes are read from the log on demand."""

    cut: Cut
    view: FsView
    session: ChainSession
    confs: dict[int, Confidentiality]

    def resolve(self, names: tuple[bytes, ...]) -> int | None:
        if names[:1] == (RESERVED,):
            return None
        return _resolve(self.view, names)

    def entries(self, directory: int) -> list[bytes]:
        """The names in ``directory`` (the root's without the reserved directory)."""
        names = sorted(self.view.dirs.get(directory, {}))
        return [n for n in names if directory != ROOT_INO or n != RESERVED]

    def read(self, ino: int) -> bytes:
        data = self.view.inodes[ino]
        return _read_pages(
            self.session, self.view.pages.get(ino, {}), self.confs.get(ino), data.size
        )

    def walk(self) -> Iterator[tuple[tuple[bytes, ...], InodeData]]:
        """Every (path, inode) of the tree below the root, parents before their entries."""
        todo: list[tuple[tuple[bytes, ...], int]] = [((), ROOT_INO)]
        while todo:
            path, directory = todo.pop()
            below = []
            for name in self.entries(directory):
                entry = self.view.lookup(directory, name)
                data = self.view.inodes.get(entry.inode) if entry is not None else None
                if entry is None or data is None:
                    continue
                yield (*path, name), data
                if data.is_dir:
                    below.append(((*path, name), entry.inode))
            todo.extend(reversed(below))


def tree_at(session: ChainSession, as_of_ms: int, limit: int | None = None) -> PastTree:
    """The tree as it was at ``as_of_ms`` (the prefix ``cut_at`` gives, among the first
    ``limit`` transactions); ``PastError`` when the log holds nothing that early."""
    cut = cut_at(session, as_of_ms, limit)
    twin, indexer = _twin(session)
    done = 0
    try:
        for tx in _transactions(twin):
            if done == cut.transactions:
                break
            twin.pipeline.accept(twin.index, tx)
            done += 1
    except DomainError as exc:
        raise PastError(f"the log fails validation: {exc}") from None
    return PastTree(cut, indexer.view, twin, indexer.confs)
