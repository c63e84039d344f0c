"""Transactions of a local log as a chain server takes them (``domain.wire.CommitRecord``), for
the mounts that replicate through a server, and the records a server streams back as log
records.

A local transaction ends in a ``LocalSeal`` (ADR 0004), which no server accepts: before upload its
seal is replaced by a signed one over the same events (``reseal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from application.ports import LogRecord, RedoLog
from domain.events import EventHeader, Meta, encode_meta, parse_header
from domain.formats import Format
from domain.hashing import EMPTY_HASH, sha256_of
from domain.trust import signed_digest
from domain.wire import CommitRecord, WireRecord


def transaction_records(log: RedoLog, start: int, end: int | None = None) -> list[CommitRecord]:
    """The committed records of ``log`` in [start, end) (default: to the committed end), data
    included: one or more whole transactions, each ending in its seal."""
    out: list[CommitRecord] = []
    for rec in log.scan(start, end):
        data = log.read_data(rec.data) if rec.data is not None else None
        out.append(CommitRecord(rec.meta, rec.fmt, data))
    return out


def split_transactions(log: RedoLog, start: int | None = None) -> list[list[CommitRecord]]:
    """The committed transactions of ``log`` from ``start`` (a transaction's first record;
    default the first), each as its records (data included), the seal last."""
    out: list[list[CommitRecord]] = []
    current: list[CommitRecord] = []
    for rec in log.scan(start):
        data = log.read_data(rec.data) if rec.data is not None else None
        current.append(CommitRecord(rec.meta, rec.fmt, data))
        if rec.commit:
            out.append(current)
            current = []
    return out


def header_of(record: CommitRecord | WireRecord) -> EventHeader:
    """The parsed event (or seal) of a record; ``MalformedEvent`` when it does not parse."""
    data = record.data
    return parse_header(
        record.meta, record.fmt, sha256_of(data) if data is not None else EMPTY_HASH
    )


def digest_of(
    chain_id: bytes, events: Iterable[CommitRecord | WireRecord], seal: Sequence[Meta]
) -> bytes:
    """What a signature over these events, on a seal carrying ``seal`` besides its signatures,
    must cover (``signed_digest``)."""
    return signed_digest(chain_id, (header_of(r).hash for r in events), seal)


def reseal(
    records: Sequence[CommitRecord], seal: Sequence[Meta], fmt: Format = Format.BINCODE
) -> list[CommitRecord]:
    """The transaction ``records`` (events + a seal) with its seal replaced by ``seal``."""
    return [*records[:-1], CommitRecord(encode_meta(list(seal), fmt), int(fmt), None)]


def log_record(record: WireRecord) -> LogRecord:
    """A streamed record as a record of a local log (its commit flag kept)."""
    return LogRecord(record.meta, record.fmt, record.data, record.commit)
