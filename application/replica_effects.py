"""What a streamed transaction changes on a mount beyond its log and view (docs/adr/0009): the
names and inodes the kernel must forget once it is applied, and the conflict copy kept when a
file was changed both here and on another replica while this one was disconnected.

``ReplicationService`` (application/replication.py) calls these as it applies the server's
stream; they touch the file system and the kernel cache, never the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from application.filesystem import FileSystemService, decode_struct
from application.ports import KernelCache
from application.session import ChainSession
from domain.chain import Transaction, event_key
from domain.events import Chunk, EventHeader, Parent, Tombstone, Type
from domain.fs.model import TYPE_DENTRY, TYPE_INODE, TYPE_PAGE, InodeData

log = logging.getLogger("wasmer_dfs.replication")


def names_before(fs: FileSystemService, headers: Sequence[EventHeader]) -> set[tuple[int, bytes]]:
    """The names (directory, name) the dentries of a transaction have before it applies."""
    out: set[tuple[int, bytes]] = set()
    for hd in headers:
        key = event_key(hd)
        if key is not None:
            d = fs.view.dentries.get(key)
            if d is not None:
                out.add((d[0], d[1]))
    return out


async def invalidate(
    fs: FileSystemService,
    kernel: KernelCache | None,
    tx: Transaction,
    before: set[tuple[int, bytes]],
) -> None:
    """Forget what the file system and the kernel (when mounted) cached of what the applied
    events of ``tx`` changed; ``before``: the names they had (``names_before``)."""
    view = fs.view
    entries = set(before)
    inodes: set[int] = {parent for parent, _ in before}
    for ev in tx.applied:
        hd = ev.header
        key = event_key(hd)
        if key is None:
            continue
        typ = hd.find(Type)
        parent = hd.find(Parent)
        if typ is not None and typ.name == TYPE_DENTRY:
            d = view.dentries.get(key)
            if d is not None:
                entries.add((d[0], d[1]))
                inodes.add(d[0])
                inodes.add(d[2])
            elif parent is not None:
                inodes.add(parent.parent)
        elif typ is not None and typ.name == TYPE_INODE:
            inodes.add(key)
        elif parent is not None:
            inodes.add(parent.parent)  # a page or the extended attributes of an inode
    for ino in inodes:
        fs.forget_cached(ino)
    if kernel is not None:
        await kernel.invalidate(inodes, entries)


class ConflictCopies:
    """The conflict copies made of other replicas' versions of files changed here too."""

    def __init__(self, session: ChainSession, fs: FileSystemService) -> None:
        self.session = session
        self.fs = fs
        #: file -> the conflict copy made of another replica's version of it
        self.copies: dict[int, int] = {}

    def keep_theirs(
        self, tx: Transaction, keys: set[int], end: int, on_copy: Callable[[], None]
    ) -> None:
        """Both sides changed a file while disconnected; the server orders this replica's
        change later, so its version keeps the name: theirs is kept as a conflict copy
        (``on_copy`` is called for each copy made)."""
        theirs: dict[int, InodeData | None] = {}
        pages: dict[int, dict[int, bytes]] = {}
        for ev in tx.events:
            hd = ev.header
            key = event_key(hd)
            if key not in keys or hd.find(Tombstone) is not None:
                continue
            typ, parent, chunk = hd.find(Type), hd.find(Parent), hd.find(Chunk)
            payload = self.session.read_payload(hd, ev.locator)
            if typ is not None and typ.name == TYPE_INODE:
                theirs[key] = decode_struct(payload, InodeData)
            elif typ is not None and typ.name == TYPE_PAGE and parent and chunk:
                theirs.setdefault(parent.parent, None)
                pages.setdefault(parent.parent, {})[chunk.index] = payload
        for ino, inode in theirs.items():
            self.fs.flush_file(ino)
            copy = self.fs.conflict_copy(
                ino, inode, pages.get(ino, {}), f"{end:x}", into=self.copies.get(ino)
            )
            if copy is not None:
                self.copies[ino] = copy
                on_copy()
                log.warning(
                    "file %d was changed here and on another replica while disconnected: this"
                    " version keeps its name, the other one is kept as a conflict copy", ino
                )  # fmt: skip
        self.session.commit()

    def settle(self, busy: Callable[[int], bool]) -> None:
        """Forget the copies of files whose change here is in the chain (``busy`` false)."""
        if self.copies:  # conflicts end when this replica's change is in the chain
            self.copies = {f: c for f, c in self.copies.items() if busy(f)}
