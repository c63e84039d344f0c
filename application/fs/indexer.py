"""``FsIndexer``: the tree view built from events. It folds inode, dentry, page and xattr events
into the ``FsView`` (domain/fs/view.py), on replay and live alike, so a remount rebuilds exactly
what was there; its state is what a checkpoint saves (application/snapshot.py, docs/adr/0007).
Split out of application/filesystem.py (issue 13); re-exported there."""

from __future__ import annotations

from application import snapshot
from application.fs.codec import decode_struct
from application.ports import DataRef
from application.session import ChainSession, Rebuildable
from domain.chain import ChainIndex, Located, shared
from domain.events import Chunk, Confidentiality, Parent, Type
from domain.fs.model import (
    TYPE_DENTRY,
    TYPE_INODE,
    TYPE_PAGE,
    TYPE_XATTRS,
    DentryData,
    InodeData,
    XattrData,
)
from domain.fs.view import FsView


class FsIndexer:
    """Folds inode, dentry and page events into the view (replay and live alike)."""

    def __init__(self, view: FsView, session: ChainSession) -> None:
        self.view = view
        self.session = session
        self.confs: dict[int, Confidentiality] = {}

    def _payload(self, ev: Located) -> bytes:
        if ev.plaintext is not None:
            return ev.plaintext
        assert isinstance(ev.locator, DataRef)
        return self.session.read_payload(ev.header, ev.locator)

    def on_event(self, index: ChainIndex, ev: Located, change: tuple[str, int] | None) -> None:
        if change is None:
            return
        hdr = ev.header
        typ = hdr.find(Type)
        kind = typ.name if typ is not None else None
        what, key = change
        if what == "delete":
            if kind == TYPE_DENTRY:
                self.view.delete_dentry(key)
            elif kind == TYPE_INODE:
                self.view.delete_inode(key)
                self.confs.pop(key, None)
            elif kind == TYPE_PAGE:
                parent, chunk = hdr.find(Parent), hdr.find(Chunk)
                if parent is not None and chunk is not None:
                    self.view.delete_page(parent.parent, chunk.index)
            elif kind == TYPE_XATTRS:
                parent = hdr.find(Parent)
                if parent is not None:
                    self.view.put_xattrs(parent.parent, {})
            return
        if kind == TYPE_PAGE:
            parent, chunk = hdr.find(Parent), hdr.find(Chunk)
            if parent is not None and chunk is not None:
                self.view.put_page(parent.parent, chunk.index, (ev.locator, hdr.meta_hash))
        elif kind == TYPE_INODE:
            conf = hdr.find(Confidentiality)
            if conf is not None:
                self.confs[key] = _shared_conf(conf)
            inode = ev.decoded if isinstance(ev.decoded, InodeData) else None
            self.view.put_inode(key, inode or decode_struct(self._payload(ev), InodeData))
        elif kind == TYPE_DENTRY:
            parent = hdr.find(Parent)
            if parent is not None:
                dentry = ev.decoded if isinstance(ev.decoded, DentryData) else None
                dentry = dentry or decode_struct(self._payload(ev), DentryData)
                self.view.put_dentry(key, parent.parent, dentry)
        elif kind == TYPE_XATTRS:
            parent = hdr.find(Parent)
            if parent is not None:
                xa = ev.decoded if isinstance(ev.decoded, XattrData) else None
                xa = xa or decode_struct(self._payload(ev), XattrData)
                self.view.put_xattrs(parent.parent, dict(xa.entries))

    # -- rebuilding and checkpoints (compaction; see application/snapshot.py) ------------------
    def fork(self, session: ChainSession) -> FsIndexer:
        """An empty indexer of a view of its own, reading through ``session``."""
        return FsIndexer(FsView(), session)

    def adopt(self, other: Rebuildable) -> None:
        """Take ``other``'s state in place (the service's reference to the view stays valid)."""
        snapshot.adopt(self, other)

    def export_state(self) -> bytes | None:
        return snapshot.export(self)

    def import_state(self, blob: bytes | memoryview) -> None:
        snapshot.load(self, blob)


def _shared_conf(conf: Confidentiality) -> Confidentiality:
    """``conf`` with the one object of its read key's hash (the same in every inode)."""
    key_hash = shared(conf.key_hash)
    if key_hash is conf.key_hash:
        return conf
    return Confidentiality(key_hash, conf.wrapped_key)
