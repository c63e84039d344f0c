"""File contents: the page cache and the write buffer.

Writes are buffered per page (so a run of small writes becomes one page event) until a flush
writes each dirty page as one event: on fsync, close, a memory threshold or a timer (the service
decides when). Decrypted pages are kept in a bounded LRU cache for reads of part of a page and
for read-modify-write; a read of a whole page is not kept (the kernel's page cache holds it).
Page ``idx`` of a file is the object ``derive_u64(ino, idx)``; a missing page is a hole.
Split out of application/filesystem.py (issue 13)."""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Callable

from application.fs.values import SEEK_DATA
from application.session import ChainIntegrityError, ChainSession, ObjectKey
from domain.events import Chunk
from domain.fs.model import COLL_PAGES, TYPE_PAGE, FsError, page_span, pages_for_size
from domain.fs.view import FsView
from domain.hashing import derive_u64


class PageBuffer:
    """The dirty pages of every file (the write buffer) and a cache of decrypted pages."""

    def __init__(
        self,
        session: ChainSession,
        view: FsView,
        okey: Callable[[int], ObjectKey | None],
        room: Callable[[int], None],
        size_of: Callable[[int], int],
        *,
        cache_bytes: int,
        event_overhead: int,
    ) -> None:
        self.session = session
        self.view = view
        self.page_size = session.header.page_size
        self._okey = okey
        #: raises FsError(ENOSPC) unless the log's disk has room for that many payload bytes
        self._room = room
        #: the current size of a file (its buffered attributes first)
        self._size_of = size_of
        self._event_overhead = event_overhead
        self._dirty: dict[int, dict[int, bytearray]] = {}
        #: bytes the dirty pages take (a whole page each)
        self.dirty_bytes = 0
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_pages = max(1, cache_bytes // self.page_size)

    # -- reading -------------------------------------------------------------------------------
    def load(self, ino: int, idx: int, keep: bool = True) -> bytes:
        """Page ``idx`` of ``ino`` (b"" for a hole), the buffered one first; verified and
        decrypted (``FsError(EIO)`` when it fails its checks); kept in the cache if ``keep``."""
        dirty = self._dirty.get(ino)
        if dirty is not None and idx in dirty:
            return bytes(dirty[idx])
        cached = self._cache.get((ino, idx))
        if cached is not None:
            self._cache.move_to_end((ino, idx))
            return cached
        pages = self.view.pages.get(ino)
        ref = pages.get(idx) if pages else None
        if ref is None:
            return b""
        loc, meta_hash = ref
        try:
            data = self.session.read_sealed(loc, meta_hash, self._okey(ino))
        except ChainIntegrityError as exc:
            raise FsError(errno.EIO, str(exc)) from None
        if keep:
            self._cache[(ino, idx)] = data
            if len(self._cache) > self._cache_pages:
                self._cache.popitem(last=False)
        return data

    def read(self, ino: int, size: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a file of ``size`` bytes (holes read as zeros)."""
        end = min(offset + length, size)
        if offset >= end:
            return b""
        ps = self.page_size
        parts: list[bytes] = []
        for idx in page_span(offset, end - offset, ps):
            lo = max(offset, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            whole = lo == 0 and idx * ps + hi >= min(size, (idx + 1) * ps)
            page = self.load(ino, idx, keep=not whole)
            chunk = page if lo == 0 and hi == len(page) else page[lo:hi]
            parts.append(chunk)
            if len(chunk) < hi - lo:  # a short page or a hole: zeros
                parts.append(bytes(hi - lo - len(chunk)))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def seek(self, ino: int, size: int, offset: int, whence: int) -> int:
        """SEEK_DATA or SEEK_HOLE from ``offset`` (inside the file) at page granularity: a page
        that exists is data, a missing one is a hole, the end of the file is a hole."""
        ps = self.page_size
        stored = self.view.pages.get(ino) or {}
        dirty = self._dirty.get(ino) or {}
        idx = offset // ps
        if whence == SEEK_DATA:
            # walk the gap, but never further than there are pages: O(min(gap, pages))
            found = None
            for i in range(idx, min(idx + len(stored) + len(dirty) + 1, pages_for_size(size, ps))):
                if i in stored or i in dirty:
                    found = i
                    break
            else:
                found = min((i for i in (*stored, *dirty) if i >= idx), default=None)
            if found is None or found * ps >= size:
                raise FsError(errno.ENXIO)
            return max(offset, found * ps)
        while idx in stored or idx in dirty:
            idx += 1
        return min(size, max(offset, idx * ps))

    def blocks(self, ino: int, size: int) -> int:
        """512-byte blocks of the pages that exist (so ``du`` of a sparse file is small)."""
        stored = self.view.pages.get(ino)
        n = len(stored) if stored else 0
        dirty = self._dirty.get(ino)
        if dirty:
            n += sum(1 for i in dirty if not stored or i not in stored)
        return (min(size, n * self.page_size) + 511) >> 9

    # -- writing (buffered) ----------------------------------------------------------------------
    def write(self, ino: int, size: int, offset: int, buf: bytes) -> None:
        """Buffer ``buf`` at ``offset`` of a file of ``size`` bytes."""
        ps = self.page_size
        dirty = self._dirty.setdefault(ino, {})
        end = offset + len(buf)
        for idx in page_span(offset, len(buf), ps):
            page = dirty.get(idx)
            lo = max(offset, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            if page is None:
                whole = lo == 0 and (hi == ps or idx * ps + hi >= size)
                page = bytearray() if whole else bytearray(self.load(ino, idx))
                self._cache.pop((ino, idx), None)
                dirty[idx] = page
                self.dirty_bytes += ps
            if len(page) < lo:
                page += bytes(lo - len(page))
            src = idx * ps + lo - offset
            page[lo:hi] = buf[src : src + hi - lo]

    def truncate(self, ino: int, old: int, new: int) -> None:
        """Cut a file of ``old`` bytes to ``new``: pages past the end are deleted, the last one
        is cut (buffered)."""
        ps = self.page_size
        keep = (new + ps - 1) // ps
        dirty = self._dirty.get(ino, {})
        for idx in [i for i in dirty if i >= keep]:
            del dirty[idx]
            self.dirty_bytes -= ps
        for idx in [i for i in self.view.pages.get(ino, {}) if i >= keep]:
            self._cache.pop((ino, idx), None)
            self._delete_page(ino, idx)
        if new < old and new % ps:
            idx = new // ps
            page = bytearray(self.load(ino, idx))[: new % ps]
            self._cache.pop((ino, idx), None)
            dirty = self._dirty.setdefault(ino, {})
            if idx not in dirty:
                self.dirty_bytes += ps
            dirty[idx] = page

    def zero_range(self, ino: int, start: int, end: int, size: int) -> None:
        """Zeros in [start, end) of a file of ``size`` bytes: whole pages become holes."""
        if end <= start:
            return
        ps = self.page_size
        dirty = self._dirty.setdefault(ino, {})
        stored = self.view.pages.get(ino) or {}
        for idx in page_span(start, end - start, ps):
            lo = max(start, idx * ps) - idx * ps
            hi = min(end, (idx + 1) * ps) - idx * ps
            if lo == 0 and (hi == ps or idx * ps + hi >= size):
                if dirty.pop(idx, None) is not None:
                    self.dirty_bytes -= ps
                self._cache.pop((ino, idx), None)
                if idx in stored:
                    self._delete_page(ino, idx)
                continue
            page = dirty.get(idx)
            if page is None:
                if idx not in stored:
                    continue  # a hole already
                page = bytearray(self.load(ino, idx))
                self._cache.pop((ino, idx), None)
                dirty[idx] = page
                self.dirty_bytes += ps
            if lo < len(page):
                top = min(hi, len(page))
                page[lo:top] = bytes(top - lo)
        if not dirty:
            del self._dirty[ino]

    def _delete_page(self, ino: int, idx: int) -> None:
        self.session.delete(
            derive_u64(ino, idx), type_name=TYPE_PAGE, parent=(ino, COLL_PAGES), extra=[Chunk(idx)]
        )

    # -- writing out -----------------------------------------------------------------------------
    def flush(self, ino: int) -> None:
        """Write each dirty page of ``ino`` as one event."""
        dirty = self._dirty.get(ino)
        if not dirty:
            self._dirty.pop(ino, None)
            return
        ps = self.page_size
        # A page stays dirty until its event is in the log: when the disk is full, nothing
        # written is lost, and a later flush (once there is room) writes it.
        self._room(len(dirty) * (ps + self._event_overhead))
        okey = self._okey(ino)
        size = self._size_of(ino)
        for idx in sorted(dirty):
            page = dirty[idx]
            valid = min(ps, max(0, size - idx * ps))
            if len(page) > valid:
                del page[valid:]
            payload = bytes(page)
            self.session.write(
                derive_u64(ino, idx),
                type_name=TYPE_PAGE,
                payload=payload,
                okey=okey,
                parent=(ino, COLL_PAGES),
                extra=[Chunk(idx)],
            )
            del dirty[idx]
            self.dirty_bytes -= ps
        self._dirty.pop(ino, None)

    def flush_all(self) -> None:
        for ino in list(self._dirty):
            self.flush(ino)

    # -- forgetting ------------------------------------------------------------------------------
    def drop(self, ino: int) -> None:
        """Forget everything of a deleted inode: its dirty pages and its cached ones."""
        dirty = self._dirty.pop(ino, None)
        if dirty:
            self.dirty_bytes -= self.page_size * len(dirty)
        self.forget_cached(ino)

    def forget_cached(self, ino: int) -> None:
        """Drop the decrypted pages kept of ``ino``."""
        for k in [k for k in self._cache if k[0] == ino]:
            del self._cache[k]
