"""Port of the redo log (docs/adr/0003-redo-log-format.md): ``RedoLog``, the factory that opens
and creates one per chain, ``DamagedLog`` for repair, their records and their errors.

Adapters: ``adapters.redolog.FileRedoLogFactory``; twin:
``adapters.memory.log.MemoryRedoLogFactory`` (see docs/adr/0017-ports-and-twins.md). Contract:
tests/contract/test_redolog_contract.py."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec


class LogError(Exception):
    """Base of the errors a redo log raises; the message is meant for a human."""


class LogNotFound(LogError):
    """The chain has no log (``RedoLogFactory.open``, ``read_header``)."""


class LogExists(LogError):
    """The chain has a log already (``RedoLogFactory.create``)."""


class LogCorrupt(LogError):
    """A record in the middle of the log is damaged (not a torn tail)."""


class LogHeaderError(LogError):
    """The file is not a redo log of this program, or its header is damaged or truncated."""


class DataRef(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Where a record's data lies in the log: read it back with ``RedoLog.read_data``. (A
    msgspec struct: compact in memory and in checkpoints, never walked by the collector.)"""

    offset: int
    length: int
    data_hash: bytes


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record: serialised metadata, its format byte, optional data, the commit flag.

    ``commit`` marks the last record of a transaction. On open, records after the last commit
    are a torn transaction and are cut.
    """

    meta: bytes
    fmt: int
    data: bytes | None
    commit: bool
    #: the data's hash when the caller has computed it already (spares hashing it twice)
    data_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    """A record found while replaying: everything but the data, which stays on disk."""

    position: int  # offset of the record's frame in the log
    meta: bytes
    fmt: int
    data: DataRef | None
    commit: bool


@dataclass(frozen=True, slots=True)
class OpenReport:
    """What opening a log found: bytes cut from a torn tail (0 when none)."""

    cut_bytes: int
    cut_from: int


@dataclass(frozen=True, slots=True)
class DamagedSpan:
    """Bytes of a damaged log where no valid record could be read (``DamagedLog.records``)."""

    start: int
    end: int


class RedoLog(abc.ABC):
    """An append-only, checksummed log of records with a versioned header.

    The header body is opaque to the log (the session stores the chain's parameters in it).
    Data is read back by offset, so memory does not grow with the size of the log.
    """

    @property
    @abc.abstractmethod
    def header(self) -> bytes:
        """The header body given to ``create`` (opaque to the log), unchanged."""

    @property
    @abc.abstractmethod
    def open_report(self) -> OpenReport:
        """What opening found (bytes cut from a torn tail); all zero for a new log."""

    @abc.abstractmethod
    def scan(self, start: int | None = None, end: int | None = None) -> Iterator[ScannedRecord]:
        """Committed records in order: from ``start`` (the position of a record; default the
        first) up to ``end`` (default, and at most, the committed end)."""

    @abc.abstractmethod
    def read_record(self, position: int) -> ScannedRecord:
        """The committed record at ``position`` (frame and meta; its data stays on disk).
        ``LogCorrupt`` when no valid record starts there."""

    @property
    @abc.abstractmethod
    def read_only(self) -> bool:
        """True when opened read-only: then ``append`` raises ``LogError`` and nothing on disk
        changes."""

    @property
    @abc.abstractmethod
    def committed_end(self) -> int:
        """End of the last committed record: where a scan ends."""

    @abc.abstractmethod
    def append(self, record: LogRecord) -> tuple[int, DataRef | None]:
        """Append one record (not yet durable); return its position and its data's location."""

    @abc.abstractmethod
    def read_data(self, ref: DataRef) -> bytes:
        """The data at ``ref``; raises ``LogCorrupt`` when its hash does not match."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""

    @abc.abstractmethod
    def size(self) -> int:
        """Bytes in the log, header included."""

    def free_space(self) -> int | None:
        """Bytes the disk under the log still has for it (an estimate, cheap to ask often);
        None when there is no such limit. A full disk shows as ``OSError(ENOSPC)`` from
        ``append``; this lets a writer refuse a change before its first record instead."""
        return None

    def abandon(self) -> None:
        """Cut the records after ``committed_end`` (an unfinished transaction), durably: what
        a writer does when a transaction cannot be finished (a full disk). Raises when the cut
        fails (then nothing more may be appended)."""
        raise LogError("this log cannot abandon an unfinished transaction")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the log (and the writer's lock); records appended but not synced may be
        lost. Nothing may be called after it."""


class RedoLogFactory(abc.ABC):
    """Opens and creates the logs of chains (one log per chain name)."""

    @abc.abstractmethod
    def exists(self, chain: str) -> bool:
        """Whether the chain has a log (opening it may still fail, e.g. a damaged header)."""

    @abc.abstractmethod
    def create(self, chain: str, header: bytes) -> RedoLog:
        """A new empty log; raises ``LogExists`` if one is there."""

    @abc.abstractmethod
    def open(self, chain: str, *, read_only: bool = False, resume_at: int | None = None) -> RedoLog:
        """An existing log: header checked, torn tail cut (unless read-only), ready to scan.

        ``resume_at`` is a committed end seen before (a checkpoint's): when a valid record or
        the end of the file lies there, only the records after it are checked for a torn tail or
        damage; otherwise the hint is ignored and the whole log is checked."""

    @abc.abstractmethod
    def read_header(self, chain: str) -> bytes:
        """Only the header body, changing nothing on disk."""

    @abc.abstractmethod
    def remove(self, chain: str) -> None:
        """Delete the chain's log (and its checkpoint)."""

    # -- rewriting a log (compaction, repair) -----------------------------------------------------
    @abc.abstractmethod
    def create_temp(self, chain: str, header: bytes) -> RedoLog:
        """A new, empty log beside the chain's log under a temporary name, open for writing and
        locked like a writer. Nothing refers to it until ``replace``; a crash leaves only a stray
        temporary file, which the next writable ``open`` of the chain deletes."""

    @abc.abstractmethod
    def replace(self, chain: str, log: RedoLog) -> None:
        """Atomically make ``log`` (from ``create_temp``, synced) the chain's log: rename it over
        the old log and make the rename durable. ``log`` stays open and is the chain's log from
        now on (it keeps the writer's lock); handles on the old log still read the old bytes. A
        crash at any instant leaves either the old or the new log, never a mix."""

    @abc.abstractmethod
    def discard(self, log: RedoLog) -> None:
        """Close and delete a temporary log that will not be used."""

    @abc.abstractmethod
    def preserve(self, chain: str, suffix: str) -> str:
        """Keep the chain's current log under a second name as well, ``<log name>.<suffix>``
        (durably; the chain's log is unchanged); returns where it is kept."""

    @abc.abstractmethod
    def open_damaged(self, chain: str) -> DamagedLog:
        """Read a log that may be damaged anywhere after its header (for repair). It changes
        nothing, but holds the writer's lock, so that the chain is not mounted meanwhile."""

    # -- checkpoints -----------------------------------------------------------------------------
    @abc.abstractmethod
    def write_checkpoint(self, chain: str, blob: bytes) -> None:
        """Store the chain's checkpoint (opaque bytes) atomically and durably."""

    @abc.abstractmethod
    def read_checkpoint(self, chain: str) -> bytes | None:
        """The chain's checkpoint, or None when there is none."""

    @abc.abstractmethod
    def remove_checkpoint(self, chain: str) -> None:
        """Delete the chain's checkpoint durably (nothing happens when there is none)."""


class DamagedLog(abc.ABC):
    """A log read record by record past damage (``RedoLogFactory.open_damaged``)."""

    @property
    @abc.abstractmethod
    def header(self) -> bytes:
        """The header body (the header itself must be intact to open a damaged log)."""

    @abc.abstractmethod
    def size(self) -> int:
        """Bytes in the log, header included."""

    @abc.abstractmethod
    def records(self) -> Iterator[ScannedRecord | DamagedSpan]:
        """Every intact record in file order, committed or not, and the damaged spans between
        them; a torn tail is a damaged span at the end."""

    @abc.abstractmethod
    def read_record(self, position: int) -> ScannedRecord:
        """The intact record at ``position`` (``LogCorrupt`` when there is none)."""

    @abc.abstractmethod
    def read_data(self, ref: DataRef) -> bytes:
        """As ``RedoLog.read_data``: ``LogCorrupt`` when the data does not match its hash."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the log and the writer's lock it held."""
