"""Positions of a chain numbered by transaction (docs/adr/0022): a record's position is
``n << 24 | i`` (transaction ``n``, 1-based, record ``i`` in it) and the end after transaction
``n`` is ``(n + 1) << 24``. The same on every server, contiguous per chain; used by the JetStream
store and the in-memory twin (the local store keeps its log offsets)."""

from __future__ import annotations

from collections.abc import Sequence

from application.ports.chain_store import StoredRecord, StoredTransaction, StoreError

TX_SHIFT = 24
#: records a transaction may hold under this numbering
MAX_RECORDS = 1 << TX_SHIFT


def position_of(index: int) -> int:
    """The position of transaction ``index`` (1-based); ``position_of(n + 1)`` is the end after
    transaction ``n``."""
    return index << TX_SHIFT


def index_at(position: int) -> int:
    """The transaction that starts at ``position`` (or the one an end is before);
    ``StoreError`` when ``position`` is not resumable."""
    if position < (1 << TX_SHIFT) or position & (MAX_RECORDS - 1):
        raise StoreError(f"position {position} is not the start of a transaction")
    return position >> TX_SHIFT


def check_transaction(records: Sequence[StoredRecord]) -> None:
    """``ValueError`` unless ``records`` are one transaction: at least its seal, the commit flag
    on the last record only."""
    if not records:
        raise ValueError("a transaction has at least one record (its seal)")
    if len(records) > MAX_RECORDS:
        raise ValueError(f"a transaction holds at most {MAX_RECORDS} records")
    if not records[-1].commit or any(r.commit for r in records[:-1]):
        raise ValueError("the commit flag belongs on the last record of a transaction only")


def numbered(index: int, records: Sequence[StoredRecord]) -> StoredTransaction:
    """Transaction ``index`` with its positions."""
    start = position_of(index)
    return StoredTransaction(
        start, position_of(index + 1), tuple(records), tuple(start + i for i in range(len(records)))
    )
