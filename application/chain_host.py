"""One chain the server hosts (``ChainHost``): its redo log, replayed and validated at open, the
commits appended to it, the durable end subscribers may be sent up to, and its failure.

Memory: a host keeps the chain index (one entry per live object), the hashes of every event
accepted (to refuse replays) and the start of every transaction (8 bytes each, to check resume
positions). Event data stays on disk; a subscriber costs at most one history batch in flight,
because its stream is read from the log at its own cursor (the log is the queue).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from application.chain_admission import ChainState, Refused, TransactionRefused, check_header
from application.ports import (
    Clock,
    Crypto,
    LogError,
    LogExists,
    LogNotFound,
    LogRecord,
    RedoLog,
    RedoLogFactory,
)
from application.server_config import ServerConfig
from domain.chain import Located, Transaction
from domain.errors import DomainError
from domain.events import parse_header
from domain.hashing import EMPTY_HASH
from domain.wire import DISK_FULL_REASON, CommitRecord, Events, WireRecord

_log = logging.getLogger("wasmer_dfs.server")

#: a full disk (or quota) under the server's logs: the commit is refused, the chain stays up
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class HostBroken(Refused):
    """The chain's log failed under a write; every connection to it ends, and the next one
    reopens the log (which cuts the unfinished transaction)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an accepted transaction lies in the server's log: [position, end)."""

    position: int
    end: int


class ChainHost:
    """One chain the server hosts: its redo log, state and subscribers.

    Positions are offsets of records in the server's log. ``committed_end`` is where the next
    transaction goes, ``durable_end`` how far the log is known fsynced: subscribers are only ever
    sent durable records, so that a client never holds what a crashed server lost.
    """

    def __init__(self, name: str, log: RedoLog, header_body: bytes, state: ChainState) -> None:
        self.name = name
        self.log = log
        self.header_body = header_body
        self.header = state.header
        self.state = state
        self.config = state.config
        #: positions where transactions start, then the committed end (ascending)
        self._boundaries = array("q")
        self.durable_end = log.committed_end
        self.broken: str | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def start(self) -> int:
        """Position of the chain's first record (where a subscription from 0 starts)."""
        return self._boundaries[0] if self._boundaries else self.log.committed_end

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, logs: RedoLogFactory, name: str, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> ChainHost | None:
        """The chain's host over its existing log (replayed and validated), or None when the
        server has no such chain. Blocking: it reads the frames of the whole log."""
        try:
            log = logs.open(name)
        except LogNotFound:
            return None
        except LogError as exc:
            raise Refused(f"the server cannot open chain {name!r}: {exc}") from None
        try:
            state = ChainState(check_header(log.header), crypto, clock, config)
            host = cls(name, log, log.header, state)
            host._replay()
        except BaseException:
            log.close()
            raise
        return host

    def _replay(self) -> None:
        at_boundary = True
        events: list[Located] = []
        try:
            for rec in self.log.scan():
                if at_boundary:
                    self._boundaries.append(rec.position)
                at_boundary = rec.commit
                data_hash = rec.data.data_hash if rec.data is not None else EMPTY_HASH
                hdr = parse_header(rec.meta, rec.fmt, data_hash)
                if not rec.commit:
                    events.append(Located(hdr, rec.data, position=rec.position))
                    continue
                tx = Transaction(tuple(events), hdr)
                events = []
                self.state.check_stored(tx)
                self.state.apply(tx)
        except (DomainError, TransactionRefused) as exc:
            raise Refused(
                f"the server's log of chain {self.name!r} fails validation: {exc}"
            ) from None
        except LogError as exc:
            raise Refused(f"the server's log of chain {self.name!r} is damaged: {exc}") from None
        self._boundaries.append(self.log.committed_end)
        self.durable_end = self.log.committed_end

    @classmethod
    def create(
        cls,
        logs: RedoLogFactory,
        name: str,
        header_body: bytes,
        records: Sequence[CommitRecord],
        crypto: Crypto,
        clock: Clock,
        config: ServerConfig,
    ) -> tuple[ChainHost, Appended]:
        """A new chain from a client's header and genesis transaction (validated before anything
        is written). The log's header body is the client's, byte for byte."""
        state = ChainState(check_header(header_body), crypto, clock, config)
        tx = state.transaction(records)
        state.check_new(tx)
        root = state.header.root_key_hash
        if root is not None and not any(s.public_key_hash == root for s in tx.signatures):
            raise TransactionRefused(
                "the genesis transaction must be signed by the chain's root key"
            )
        try:
            log = logs.create(name, header_body)
        except LogExists:
            raise Refused(f"chain {name!r} was created by another client meanwhile") from None
        except LogError as exc:
            raise Refused(f"the server cannot create chain {name!r}: {exc}") from None
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise TransactionRefused(
                f"{DISK_FULL_REASON} ({exc.strerror or exc}): chain {name!r} was not created;"
                " try again later"
            ) from None
        host = cls(name, log, header_body, state)
        host._boundaries.append(log.committed_end)
        try:
            appended = host._append(tx, records)
        except TransactionRefused:
            log.close()
            with contextlib.suppress(LogError, OSError):
                logs.remove(name)  # a chain without its genesis would be no chain
            raise
        except BaseException:
            log.close()
            raise
        return host, appended

    # -- subscribers -----------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` is called whenever the durable end moves or the host breaks."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    # -- positions -------------------------------------------------------------------------------
    @property
    def committed_end(self) -> int:
        return self.log.committed_end

    @property
    def transactions(self) -> int:
        return len(self._boundaries) - 1

    def resolve(self, position: int) -> int:
        """The log position a subscription from ``position`` starts at (0: the start)."""
        if position == 0:
            return self.start
        i = bisect.bisect_left(self._boundaries, position)
        if i == len(self._boundaries) or self._boundaries[i] != position:
            raise Refused(
                f"position {position} is not the start of a transaction in chain"
                f" {self.name!r} (durable end {self.durable_end}): subscribe from 0"
            )
        if position > self.durable_end:
            raise Refused(f"position {position} lies beyond the durable end {self.durable_end}")
        return position

    def read_batch(self, cursor: int, limit: int) -> Events:
        """Records from ``cursor`` (a record's position) up to ``limit`` (a transaction
        boundary): at most ``batch_events`` records and ``batch_bytes`` bytes, but at least one
        record."""
        self._check_alive()
        max_events = self.config.limits.batch_events
        max_bytes = self.config.limits.batch_bytes
        records: list[WireRecord] = []
        size = 0
        end = limit
        try:
            for rec in self.log.scan(cursor, limit):
                rsize = len(rec.meta) + (rec.data.length if rec.data is not None else 0)
                if records and (len(records) >= max_events or size + rsize > max_bytes):
                    end = rec.position
                    break
                data = self.log.read_data(rec.data) if rec.data is not None else None
                records.append(WireRecord(rec.position, rec.meta, rec.fmt, data, rec.commit))
                size += rsize
        except LogError as exc:
            self._break(f"the server's log of chain {self.name!r} cannot be read: {exc}")
        return Events(records, end)

    # -- committing ------------------------------------------------------------------------------
    def commit(self, records: Sequence[CommitRecord]) -> Appended:
        """Validate a transaction and append it (not durable yet: see ``sync``)."""
        self._check_alive()
        if self.config.read_only:
            raise TransactionRefused("the server is read-only")
        tx = self.state.transaction(records)
        self.state.check_new(tx)
        return self._append(tx, records)

    def _append(self, tx: Transaction, records: Sequence[CommitRecord]) -> Appended:
        located: list[Located] = []
        first = -1
        try:
            for i, rec in enumerate(records):
                last = i == len(records) - 1
                hdr = tx.seal if last else tx.events[i].header
                pos, ref = self.log.append(
                    LogRecord(rec.meta, rec.fmt, rec.data, last, hdr.data_hash)
                )
                if first < 0:
                    first = pos
                if not last:
                    located.append(Located(hdr, ref, position=pos))
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                self._break(f"writing to chain {self.name!r} failed: {exc}")
            # A full disk: the transaction's records so far are cut, and the client is told
            # (nothing of it was kept); the chain stays up and later commits go on once the
            # disk has room (docs/adr/0008).
            try:
                self.log.abandon()
            except LogError as cut:
                self._break(f"writing to chain {self.name!r} failed: {exc}; {cut}")
            _log.warning("chain %r: a commit was refused: %s", self.name, exc)
            raise TransactionRefused(
                f"{DISK_FULL_REASON} ({exc.strerror or exc}): the transaction was not stored;"
                " try again later"
            ) from None
        except (LogError, ValueError) as exc:
            # records of an unfinished transaction may be on disk: nothing more may follow
            # them; reopening the log cuts them
            self._break(f"writing to chain {self.name!r} failed: {exc}")
        end = self.log.committed_end
        self.state.apply(Transaction(tuple(located), tx.seal))
        self._boundaries.append(end)
        return Appended(first, end)

    # -- durability ------------------------------------------------------------------------------
    def sync(self) -> None:
        """fsync the log. Blocking: the adapter runs it off the event loop, so it touches
        nothing else (a failure raises; the adapter then calls ``fail`` on the loop). Everything
        appended before the call is durable when it returns."""
        self.log.sync()

    def made_durable(self, end: int) -> None:
        """The log is fsynced up to ``end`` (the ``committed_end`` read before ``sync``)."""
        if end > self.durable_end:
            self.durable_end = end
            self._notify()

    # -- failure and closing ---------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.broken is not None:
            raise HostBroken(self.broken)

    def _break(self, reason: str) -> NoReturn:
        self.fail(reason)
        raise HostBroken(reason)

    def fail(self, reason: str) -> None:
        """Mark the chain broken (its connections end; the next one reopens the log)."""
        if self.broken is None:
            _log.error("%s", reason)
            self.broken = reason
            self._notify()

    def close(self) -> None:
        self.log.close()
