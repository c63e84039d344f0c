"""Compaction of a replica's log (docs/adr/0007, "Replicas"; issue 15 part A, step 3).

A replica's log mixes three kinds of transactions (docs/adr/0009): the server's (sealed with
``Origin``: the server position after it, the objects this replica did not apply it to, the
server-order head), its own (locally sealed; pending until an ``Uploaded`` marker covers them)
and its bookkeeping (``Uploaded`` markers, local attestations). Its positions are bookkeeping:
``Uploaded.upto`` names local log positions, ``ReplicaLog`` keeps its queue of pending uploads by
position.

``ReplicaCompactionJob`` folds the prefix everything of which the server has confirmed - up to
the first local transaction still pending, and no further than the history window's cutoff -
like a local compaction (only the events this replica applied: ``Origin.skipped`` is honoured),
and right after it appends one ``Uploaded`` marker that carries what the prefix's bookkeeping
said: the newest server position and server-order head (from its last ``Origin`` or
``Uploaded``), and ``upto`` = the end of the folded prefix in the new log. Everything after the
prefix is copied transaction by transaction: the server's with their own seals (``Origin``
kept), local ones re-sealed over the new head, every ``Uploaded`` marker written again with its
``upto`` mapped to the new positions; local attestations are dropped (the compaction attests the
new head). The replication service rebuilds its queue from the new log at the swap, which it
lets happen only while no upload batch is in flight (``ReplicationService.swapping``).
"""

from __future__ import annotations

from dataclasses import dataclass

from application.compaction import (
    ChainRewriter,
    CompactionJob,
    Compactor,
    seal_time,
)
from application.ports import RedoLog, ScannedRecord
from domain.chain import event_key
from domain.compaction import Planner
from domain.events import (
    EventHeader,
    LocalSeal,
    Meta,
    Origin,
    Signature,
    Uploaded,
    make_header,
)


class ReplicaRewriter(ChainRewriter):
    """A ``ChainRewriter`` that also writes replica markers and tells where copies went."""

    def copy_at(self, rec: ScannedRecord, hdr: EventHeader, data: bytes | None) -> int:
        """Copy ``rec`` into the open transaction; its position in the new log."""
        self.copy(rec, hdr, data, auto_seal=False)
        return self._events[-1].position

    def marker(self, meta: list[Meta], at_ms: int | None) -> None:
        """Append an empty, locally sealed transaction carrying ``meta`` (as
        ``ChainSession.append_marker`` does), stamped ``at_ms`` (None: now)."""
        assert not self._events, "a marker goes between transactions"
        seal = [*meta, *self.shadow.seal_meta(self.shadow.index.head, [], at_ms)]
        hdr = make_header(seal, self.fmt, None)
        self._close(hdr, hdr.meta_bytes, int(self.fmt))


@dataclass(slots=True)
class _Group:
    """One transaction of the old log, as the split needs it."""

    start: int
    end: int
    time: int | None
    pending_candidate: bool  # a local transaction (events, neither Origin nor Uploaded)


class ReplicaCompactionJob(CompactionJob):
    """A compaction of a replica's log (see the module's docstring)."""

    def __init__(self, compactor: Compactor, old: RedoLog, end: int) -> None:
        super().__init__(compactor, old, end)
        self._first_pending = 0
        #: old log position -> new log position, for the copied range (``Uploaded.upto``)
        self.moved: dict[int, int] = {}
        #: where the folded prefix ends in the new log (old positions up to ``split`` map here)
        self.fold_end = 0
        #: the bookkeeping the folded prefix carried: server position and server-order head
        self.remote_cursor = 0
        self.remote_head = b""
        self.uploaded_upto = 0

    # -- where the fold ends ---------------------------------------------------------------------
    def _groups(self) -> list[_Group]:
        session = self.compactor.session
        groups: list[_Group] = []
        start: int | None = None
        count = 0
        uploaded = 0
        for n, rec in enumerate(self.old.scan(None, self.end), 1):
            if not n & 4095:
                self._check()
            if start is None:
                start, count = rec.position, 0
            if not rec.commit:
                count += 1
                continue
            seal = session.parse(rec)
            origin, marker = seal.find(Origin), seal.find(Uploaded)
            local = seal.find(LocalSeal) is not None
            if marker is not None and local and origin is None:
                uploaded = max(uploaded, marker.upto)
            candidate = count > 0 and origin is None and not (marker is not None and local)
            groups.append(_Group(start, -1, seal_time(seal), candidate))
            start = None
        for i, g in enumerate(groups):
            g.end = groups[i + 1].start if i + 1 < len(groups) else self.end
        # the first local transaction the server has not confirmed (as ReplicaLog._load sees it)
        self._first_pending = next(
            (i for i, g in enumerate(groups) if g.pending_candidate and g.end > uploaded),
            len(groups),
        )
        return groups

    # -- build -----------------------------------------------------------------------------------
    def build(self) -> None:
        c = self.compactor
        session, old, hook, progress = c.session, self.old, c.hook, c.progress
        groups = self._groups()
        folded = min(
            c.policy.window.folded([g.time for g in groups], c.clock.now_ms()), self._first_pending
        )
        self.split = groups[folded].start if folded < len(groups) else self.end
        fold_ms: int | None = None
        for g in groups[:folded]:
            fold_ms = g.time if g.time is not None else fold_ms
        planner = Planner(session.header.chain_id, session.header.root_write)
        group: list[tuple[int, EventHeader]] = []
        for n, rec in enumerate(old.scan(None, self.split), 1):
            if not n & 1023:
                self._check()
                progress("scan", rec.position, self.end)
            hdr = session.parse(rec)
            if not rec.commit:
                group.append((rec.position, hdr))
                continue
            self._bookkeeping(hdr)
            origin = hdr.find(Origin)
            skipped = frozenset(origin.skipped) if origin is not None else frozenset()
            for pos, ev in group:
                if not skipped or event_key(ev) not in skipped:
                    planner.add(pos, ev)  # a skipped event was never applied here
            group = []
        progress("scan", self.split, self.split)
        plan = planner.plan()
        self.events, self.objects, self.kept = plan.events, plan.objects, len(plan.positions)
        hook("planned", self.kept)
        self.tmp = c.logs.create_temp(c.chain, old.header)
        self.shadow = session.shadow(self.tmp)
        self.rewriter = rw = ReplicaRewriter(self.tmp, self.shadow, session.formats.meta)
        rw.stamp_ms = fold_ms
        total = len(plan.positions)
        for i, pos in enumerate(plan.positions):
            if not i & 255:
                self._check()
                progress("copy", i, total)
            rec = old.read_record(pos)
            data = old.read_data(rec.data) if rec.data is not None else None
            rw.copy(rec, session.parse(rec), data)
            hook("copy", i)
        rw.seal()
        if self.split > 0:
            # the prefix's bookkeeping, right after it: its end in the new log, the server's
            # position and head there (a seal cannot name the position after itself)
            self.fold_end = self.tmp.committed_end
            at = self.remote_cursor if self.remote_head or self.remote_cursor else -1
            rw.marker([Uploaded(self.fold_end, at, self.remote_head)], fold_ms)
        rw.stamp_ms = None
        progress("copy", total, total)
        self.copied_to = self.split
        self.copy_tail(self.end)  # pending uploads and the window, with their bookkeeping
        self.history_events, self.tail_events = self.tail_events, 0
        self._check()
        self.tmp.sync()
        hook("built", total)

    def _bookkeeping(self, seal: EventHeader) -> None:
        """Follow the server position, head and confirmed uploads the prefix records (as
        ``ReplicaLog._load`` reads them)."""
        origin, marker = seal.find(Origin), seal.find(Uploaded)
        if origin is not None:
            self._position(origin.end, origin.head)
        elif marker is not None and seal.find(LocalSeal) is not None:
            self.uploaded_upto = max(self.uploaded_upto, marker.upto)
            if marker.server_end >= 0:
                self._position(marker.server_end, marker.head)

    def _position(self, end: int, head: bytes) -> None:
        if end >= self.remote_cursor:
            self.remote_cursor, self.remote_head = end, head

    # -- the rest, transaction by transaction ----------------------------------------------------
    def new_position(self, old: int) -> int:
        """Where an old log position (a record's start, or the end of the copied range) lies in
        the new log; positions in the folded prefix all map to its end."""
        if old <= self.split:
            return self.fold_end
        try:
            return self.moved[old]
        except KeyError:
            raise ValueError(f"log position {old} was not copied by the compaction") from None

    def copy_tail(self, end: int) -> None:
        """Copy the committed transactions in [copied_to, end) of the old log: the server's and
        signed ones with their own seals, local ones re-sealed over the new head at their own
        time, ``Uploaded`` markers with ``upto`` mapped; local attestations are dropped."""
        rw = self.rewriter
        assert isinstance(rw, ReplicaRewriter) and self.tmp is not None
        session = self.compactor.session
        count = 0
        for rec in self.old.scan(self.copied_to, end):
            hdr = session.parse(rec)
            if count == 0:  # a transaction starts here: it lands at the new log's end
                self.moved[rec.position] = self.tmp.committed_end
            if not rec.commit:
                data = self.old.read_data(rec.data) if rec.data is not None else None
                self.moved[rec.position] = rw.copy_at(rec, hdr, data)
                count += 1
                continue
            marker = hdr.find(Uploaded)
            if hdr.find(Origin) is not None or any(isinstance(m, Signature) for m in hdr.meta):
                if count or hdr.find(Origin) is not None:
                    rw.copy_seal(rec, hdr)  # the server's seal (and Origin), or a signed one
                # else: an attestation of the old head (the compaction attests the new one)
            elif count:
                rw.seal(seal_time(hdr))  # re-sealed over the new head, at its own time
            elif marker is not None:
                moved = Uploaded(self.new_position(marker.upto), marker.server_end, marker.head)
                rw.marker([moved], seal_time(hdr))
            self.tail_events += count
            count = 0
        self.moved[end] = self.tmp.committed_end
        self.copied_to = end


class ReplicaCompactor(Compactor):
    """The compactor of a replicated mount: its jobs keep the replica's bookkeeping."""

    job_type = ReplicaCompactionJob
