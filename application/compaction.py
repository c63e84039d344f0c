"""Compaction: rewrite a chain's log down to the events its state needs, while the chain stays
open for reading and writing (docs/adr/0007; the rules are in ``domain/compaction.py``).

1. ``Compactor.begin`` (on the event loop): seal what is pending; the committed end ``P`` is the
   snapshot.
2. ``CompactionJob.build`` (off the loop): fold the events before ``P``, plan what to keep, copy
   the kept records byte for byte (metadata and encrypted data unchanged) into a temporary log
   beside the old one, sealing them anew in transactions of bounded size with local seals over
   the new log's head. A *shadow* session validates every new transaction and builds the new
   state (index and file tree) as it goes. ``catch_up`` copies what was committed meanwhile.
3. ``Compactor.finish`` (briefly, on the loop): seal what is pending, copy the last records
   written since, fsync, drop the stale checkpoint, rename the new log over the old one
   (atomic; directory fsynced), take the shadow's state over in place, sign the new head, and
   save a checkpoint.

The old log is append-only, so reading it beside the writer is safe; it is replaced only by the
rename, so a crash at any instant leaves the old log or the new one, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from application import checkpoint
from application.checkpoint import CompactionMark
from application.ports import Clock, LogError, LogRecord, RedoLog, RedoLogFactory, ScannedRecord
from application.session import ChainSession, SessionError
from domain.chain import Located, Transaction
from domain.compaction import CompactPolicy, HistoryWindow, Planner, compaction_due
from domain.events import EventHeader, Signature, Timestamp, make_header
from domain.formats import Format

_log = logging.getLogger("wasmer_dfs.compaction")

#: step name, count: called at every step of a compaction (tests inject crashes through it)
Hook = Callable[[str, int], None]
#: phase ("scan", "copy"), done, total
Progress = Callable[[str, int, int], None]


class CompactionError(Exception):
    """A compaction could not be done; the old log is unchanged."""


class CompactionCancelled(CompactionError):
    pass


@dataclass(frozen=True, slots=True)
class CompactionResult:
    before: int  # bytes of the log before
    after: int  # bytes of the new log (with its attestation)
    events: int  # event records read before the snapshot
    kept: int  # of them, kept
    objects: int  # live objects
    tail_events: int  # events written while the compaction ran, carried over
    seconds: float
    history_events: int = 0  # events of the history window, kept as they were


def seal_time(seal: EventHeader) -> int | None:
    """The time (ms since the epoch) a transaction's seal carries (None: none)."""
    ts = seal.find(Timestamp)
    return int(ts.ms) if isinstance(ts, Timestamp) else None


def _noop_hook(step: str, n: int) -> None:
    pass


def _noop_progress(phase: str, done: int, total: int) -> None:
    pass


class ChainRewriter:
    """Appends copies of event records to a new log and seals them anew. Every transaction goes
    through ``shadow`` (a session over the new log), which validates it and materialises it."""

    MAX_TX_EVENTS = 4096
    MAX_TX_BYTES = 16 << 20

    def __init__(self, log: RedoLog, shadow: ChainSession, fmt: Format) -> None:
        self.log = log
        self.shadow = shadow
        self.fmt = fmt
        self._events: list[Located] = []
        self._bytes = 0
        self._tx_start = -1
        self.events = 0
        self.transactions = 0
        #: the time the seals it makes carry (None: now): a compacted prefix carries the time
        #: of the last transaction it folds, so time travel finds it where it was
        self.stamp_ms: int | None = None

    def copy(
        self, rec: ScannedRecord, hdr: EventHeader, data: bytes | None, *, auto_seal: bool = True
    ) -> None:
        """Append a copy of ``rec`` (whose data is ``data``); with ``auto_seal`` the current
        transaction is sealed when it reaches its size limits."""
        if (data is None) != (rec.data is None):
            raise ValueError("the data of a copied record must be given exactly when it has one")
        data_hash = rec.data.data_hash if rec.data is not None else None
        pos, ref = self.log.append(LogRecord(rec.meta, rec.fmt, data, False, data_hash))
        if not self._events:
            self._tx_start = pos
        self._events.append(Located(hdr, ref, position=pos))
        self._bytes += len(data) if data else 0
        self.events += 1
        if auto_seal and (
            len(self._events) >= self.MAX_TX_EVENTS or self._bytes >= self.MAX_TX_BYTES
        ):
            self.seal()

    def seal(self, at_ms: int | None = None) -> None:
        """Seal the current transaction with a local seal over the new log's head, stamped
        ``at_ms`` (default ``stamp_ms``, else now)."""
        if not self._events:
            return
        hashes = [e.header.hash for e in self._events]
        stamp = at_ms if at_ms is not None else self.stamp_ms
        meta = self.shadow.seal_meta(self.shadow.index.head, hashes, stamp)
        hdr = make_header(meta, self.fmt, None)
        self._close(hdr, hdr.meta_bytes, int(self.fmt))

    def copy_seal(self, rec: ScannedRecord, hdr: EventHeader) -> None:
        """Close the current transaction with a copy of its original seal (signatures cover a
        transaction's events, not the head before it, so they hold in the new log)."""
        self._close(hdr, rec.meta, rec.fmt)

    def _close(self, hdr: EventHeader, meta: bytes, fmt: int) -> None:
        pos, _ = self.log.append(LogRecord(meta, fmt, None, True))
        tx = Transaction(events=tuple(self._events), seal=hdr)
        start = self._tx_start if self._events else pos
        self._events = []
        self._bytes = 0
        self.transactions += 1
        self.shadow.accept(tx)
        self.shadow.last_tx_start = start  # what a checkpoint of the new log anchors to


class CompactionJob:
    """One compaction: ``build`` and ``catch_up`` run off the event loop; ``Compactor.finish``
    completes it on the loop."""

    CATCH_UP_BYTES = 1 << 20  # what finish may copy on the loop; catch_up copies the rest first

    def __init__(self, compactor: Compactor, old: RedoLog, end: int) -> None:
        self.compactor = compactor
        self.old = old
        self.end = end
        self.copied_to = end
        self.tmp: RedoLog | None = None
        self.shadow: ChainSession | None = None
        self.rewriter: ChainRewriter | None = None
        self.events = 0
        self.kept = 0
        self.objects = 0
        self.tail_events = 0
        #: events of the history window (transactions newer than its cutoff) kept as they were
        self.history_events = 0
        #: where the folded prefix ends in the old log (the end without a window)
        self.split = end
        self.started = time.monotonic()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask ``build``/``catch_up`` to stop soon (from another thread)."""
        self._cancel.set()

    def _check(self) -> None:
        if self._cancel.is_set():
            raise CompactionCancelled("compaction cancelled")

    def build(self) -> None:
        c = self.compactor
        session, old, hook, progress = c.session, self.old, c.hook, c.progress
        window = c.policy.window
        fold_ms: int | None = None
        if window.ms:
            self.split, fold_ms = self._split(window, c.clock.now_ms())
        planner = Planner(session.header.chain_id, session.header.root_write)
        for n, rec in enumerate(old.scan(None, self.split), 1):
            if not n & 1023:
                self._check()
                progress("scan", rec.position, self.end)
            if not rec.commit:
                planner.add(rec.position, session.parse(rec))
        progress("scan", self.split, self.split)
        plan = planner.plan()
        self.events, self.objects, self.kept = plan.events, plan.objects, len(plan.positions)
        hook("planned", self.kept)
        self.tmp = c.logs.create_temp(c.chain, old.header)
        self.shadow = session.shadow(self.tmp)
        self.rewriter = rw = ChainRewriter(self.tmp, self.shadow, session.formats.meta)
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
        rw.stamp_ms = None
        progress("copy", total, total)
        if self.split < self.end:  # the history window: every transaction after the cutoff
            self.copied_to = self.split
            self.copy_tail(self.end)
            self.history_events, self.tail_events = self.tail_events, 0
            self._check()
        self.tmp.sync()
        hook("built", total)

    def _split(self, window: HistoryWindow, now_ms: int) -> tuple[int, int | None]:
        """Where the prefix a compaction folds ends in the old log (``HistoryWindow.folded``),
        and the time of its last transaction (None: nothing is folded)."""
        starts: list[int] = []  # the position of each transaction's first record
        times: list[int | None] = []
        start: int | None = None
        for n, rec in enumerate(self.old.scan(None, self.end), 1):
            if not n & 4095:
                self._check()
            if start is None:
                start = rec.position
            if rec.commit:
                starts.append(start)
                times.append(seal_time(self.compactor.session.parse(rec)))
                start = None
        folded = window.folded(times, now_ms)
        split = starts[folded] if folded < len(starts) else self.end
        last = None
        for t in times[:folded]:
            last = t if t is not None else last
        return split, last

    def catch_up(self) -> None:
        """Copy what was committed to the old log meanwhile, until little is left for finish."""
        while self.old.committed_end - self.copied_to > self.CATCH_UP_BYTES:
            self._check()
            self.copy_tail(self.old.committed_end)
        if self.tmp is not None:
            self.tmp.sync()

    def copy_tail(self, end: int) -> None:
        """Copy the committed transactions in [copied_to, end) of the old log, each sealed anew
        over the new head (or with its own signatures); old attestations are dropped."""
        rw = self.rewriter
        assert rw is not None
        session = self.compactor.session
        count = 0
        for rec in self.old.scan(self.copied_to, end):
            hdr = session.parse(rec)
            if not rec.commit:
                data = self.old.read_data(rec.data) if rec.data is not None else None
                rw.copy(rec, hdr, data, auto_seal=False)
                count += 1
            elif count:
                if any(isinstance(m, Signature) for m in hdr.meta):
                    rw.copy_seal(rec, hdr)
                else:
                    rw.seal(seal_time(hdr))  # re-sealed over the new head, at its own time
                self.tail_events += count
                count = 0
            # a seal without events is an attestation of the old head: dropped
        self.copied_to = end

    def abort(self) -> None:
        """Throw the unfinished new log away (the old one was never touched)."""
        if self.tmp is not None:
            tmp, self.tmp = self.tmp, None
            self.compactor.logs.discard(tmp)


class Compactor:
    """Decides when to compact a chain's log, and does it (see the module's docstring)."""

    RETRY_SECONDS = 60.0  # after a failed compaction, wait before trying again (doubling)
    #: the job a compaction runs (a replica's keeps its bookkeeping: application/replica_compaction)
    job_type: type[CompactionJob] = CompactionJob

    def __init__(
        self,
        logs: RedoLogFactory,
        chain: str,
        session: ChainSession,
        clock: Clock,
        policy: CompactPolicy,
        *,
        mark: CompactionMark | None = None,
        hook: Hook | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.logs = logs
        self.chain = chain
        self.session = session
        self.clock = clock
        self.policy = policy
        self.hook: Hook = hook or _noop_hook
        self.progress: Progress = progress or _noop_progress
        self.job: CompactionJob | None = None
        self.mark = mark
        self._base_size = mark.size if mark is not None else session.log.size()
        self._base_ms = mark.at_ms if mark is not None else clock.now_ms()
        self._failures = 0
        self._retry_at = float("-inf")
        self.last: CompactionResult | None = None
        #: compactions completed and given up since the chain was opened (--metrics)
        self.completed = 0
        self.failures = 0

    # -- when ------------------------------------------------------------------------------------
    @property
    def modified(self) -> bool:
        """Whether events were written since the last compaction (unknown: yes)."""
        return self.mark is None or self.session.index.head != self.mark.head

    def due(self) -> bool:
        if self.job is not None or self.session.log_closed or self.session.log.read_only:
            return False
        if self.clock.monotonic() < self._retry_at:
            return False
        return compaction_due(
            self.policy,
            log_size=self.session.log.size(),
            base_size=self._base_size,
            seconds_since=max(0, self.clock.now_ms() - self._base_ms) / 1000,
            modified=self.modified,
        )

    # -- how -------------------------------------------------------------------------------------
    def begin(self) -> CompactionJob:
        """Start a compaction (on the loop): returns the job whose ``build`` runs off it."""
        if self.job is not None:
            raise CompactionError("a compaction is already running")
        session = self.session
        if session.log.read_only or session.log_closed:
            raise CompactionError("the log is not open for writing")
        session.commit()
        self.job = self.job_type(self, session.log, session.log.committed_end)
        self.hook("begin", self.job.end)
        return self.job

    def failed(self, job: CompactionJob) -> None:
        """Give a job up (after an error or a cancellation): nothing changed on disk."""
        try:
            job.abort()
        finally:
            if self.job is job:
                self.job = None
            self._failures += 1
            self.failures += 1
            delay = self.RETRY_SECONDS * 2 ** min(self._failures - 1, 6)
            self._retry_at = self.clock.monotonic() + delay

    def finish(self, job: CompactionJob, *, save_checkpoint: bool = True) -> CompactionResult:
        """Complete a built job (on the loop): the new log replaces the old one. Without
        ``save_checkpoint`` the caller saves it (``encode_checkpoint`` now, on the loop, then
        ``write_checkpoint`` anywhere: the bytes no longer change)."""
        if self.job is not job or job.tmp is None or job.shadow is None:
            raise CompactionError("this compaction was not started or not built")
        session = self.session
        old = job.old
        before = old.size()
        tmp = job.tmp
        try:
            session.commit()
            job.copy_tail(old.committed_end)
            tmp.sync()
            self.hook("synced", job.tail_events)
            # the checkpoint describes the old log: it must not outlive it
            self.logs.remove_checkpoint(self.chain)
            self.hook("replacing", 0)
        except BaseException:
            self.failed(job)
            raise
        try:
            self.logs.replace(self.chain, tmp)
        except BaseException:
            # Whether the rename happened is unknown: writing on would risk a fork. Stop.
            self.job = None
            session.close()
            raise
        self.hook("replaced", 0)
        session.adopt(job.shadow)
        old.close()
        self.job = None
        self._failures = 0
        session.attest()
        session.log.sync()
        self.hook("attested", 0)
        after = session.log.size()
        self.mark = CompactionMark(after, self.clock.now_ms(), session.index.head)
        self._base_size, self._base_ms = after, self.mark.at_ms
        if save_checkpoint:
            self.save_checkpoint()
        self.hook("done", after)
        self.last = CompactionResult(
            before=before,
            after=after,
            events=job.events,
            kept=job.kept,
            objects=job.objects,
            tail_events=job.tail_events,
            seconds=time.monotonic() - job.started,
            history_events=job.history_events,
        )
        self.completed += 1
        return self.last

    def compact(self) -> CompactionResult:
        """A whole compaction, here and now (``--compact-now``, tests)."""
        job = self.begin()
        try:
            job.build()
        except BaseException:
            self.failed(job)
            raise
        return self.finish(job)

    def encode_checkpoint(self) -> bytes | None:
        """The checkpoint of the current state (None when it cannot be made now)."""
        try:
            return checkpoint.encode(self.session, self.mark)
        except (LogError, SessionError) as exc:
            _log.warning("no checkpoint was saved: %s", exc)
            return None

    def write_checkpoint(self, blob: bytes) -> None:
        """Store an encoded checkpoint (safe off the event loop)."""
        try:
            self.logs.write_checkpoint(self.chain, blob)
        except (OSError, LogError) as exc:
            _log.warning("no checkpoint was saved: %s", exc)

    def save_checkpoint(self) -> bool:
        """Save a checkpoint of the current state (at unmount); False when it could not be
        (the next open then replays more, nothing else)."""
        try:
            return checkpoint.save(self.logs, self.chain, self.session, self.mark)
        except (OSError, LogError, SessionError) as exc:
            _log.warning("no checkpoint was saved: %s", exc)
            return False


@dataclass(frozen=True, slots=True)
class HistorySpace:
    """What the past takes in a log (``verify``): ``live`` bytes hold the newest version of
    every live object (what a compaction keeping no history keeps, seals aside), the rest of
    the log is history - earlier versions, deleted objects, seals and attestations."""

    log_bytes: int
    live_bytes: int
    #: the time of the first transaction the log holds (None: none has a time)
    oldest_ms: int | None

    @property
    def history_bytes(self) -> int:
        return max(0, self.log_bytes - self.live_bytes)


def history_space(session: ChainSession, log: RedoLog | None = None) -> HistorySpace:
    """Measure ``HistorySpace`` of the session's log (or ``log``): one scan and a plan, as a
    compaction without a window would make it; a record's size is the distance to the next."""
    log = log if log is not None else session.log
    end = log.committed_end
    planner = Planner(session.header.chain_id, session.header.root_write)
    sizes: dict[int, int] = {}
    prev: int | None = None
    oldest: int | None = None
    for rec in log.scan(None, end):
        if prev is not None:
            sizes[prev] = rec.position - prev
        prev = rec.position
        hdr = session.parse(rec)
        if rec.commit:
            if oldest is None:
                oldest = seal_time(hdr)
        else:
            planner.add(rec.position, hdr)
    if prev is not None:
        sizes[prev] = end - prev
    live = sum(sizes.get(p, 0) for p in planner.plan().positions)
    return HistorySpace(log_bytes=log.size(), live_bytes=live, oldest_ms=oldest)
