"""The local chain store (application/ports/chain_store.py): one redo log per chain under the
server's data directory (ADR 0003), as ``serve --data-dir`` has always kept chains. Positions
are the log's byte offsets, so existing chains and clients see the same positions as before.
One writer per chain (the log is locked by its writer): ``catch_up`` has nothing to bring."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from application.ports import LogError, LogExists, LogNotFound, LogRecord, RedoLog, RedoLogFactory
from application.ports.chain_store import (
    ChainStore,
    ChainStoreFactory,
    StoreConflict,
    StoredRecord,
    StoredTransaction,
    StoreError,
    StoreExists,
    StoreNotFound,
)


class LocalChainStore(ChainStore):
    def __init__(self, name: str, log: RedoLog) -> None:
        self.name = name
        self.log = log
        first = next(iter(log.scan()), None)
        self._start = first.position if first is not None else log.committed_end
        self._durable = log.committed_end

    @property
    def header(self) -> bytes:
        return self.log.header

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self.log.committed_end

    @property
    def durable_end(self) -> int:
        return self._durable

    def append(self, records: Sequence[StoredRecord], expected_end: int) -> StoredTransaction:
        if not records or not records[-1].commit or any(r.commit for r in records[:-1]):
            raise ValueError("the commit flag belongs on the last record of a transaction only")
        if expected_end != self.log.committed_end:
            raise StoreConflict(
                f"chain {self.name!r} ends at {self.log.committed_end}, not at {expected_end}",
                end=self.log.committed_end,
            )
        positions: list[int] = []
        try:
            for rec in records:
                pos, _ = self.log.append(LogRecord(rec.meta, rec.fmt, rec.data, rec.commit))
                positions.append(pos)
        except BaseException:
            # the records written so far are an unfinished transaction: cut them
            with contextlib.suppress(LogError):
                self.log.abandon()
            raise
        return StoredTransaction(
            positions[0], self.log.committed_end, tuple(records), tuple(positions)
        )

    def read(self, start: int, limit: int | None = None) -> Iterator[StoredTransaction]:
        end = self.log.committed_end if limit is None else min(limit, self.log.committed_end)
        records: list[StoredRecord] = []
        positions: list[int] = []
        done: tuple[tuple[StoredRecord, ...], tuple[int, ...]] | None = None
        try:
            for rec in self.log.scan(start, end):
                if done is not None:  # the previous transaction ends where this record starts
                    yield StoredTransaction(done[1][0], rec.position, done[0], done[1])
                    done = None
                data = self.log.read_data(rec.data) if rec.data is not None else None
                records.append(StoredRecord(rec.meta, rec.fmt, data, rec.commit))
                positions.append(rec.position)
                if rec.commit:
                    done = (tuple(records), tuple(positions))
                    records, positions = [], []
        except LogError as exc:
            raise StoreError(f"the log of chain {self.name!r} cannot be read: {exc}") from None
        if done is not None:
            yield StoredTransaction(done[1][0], end, done[0], done[1])

    def catch_up(self) -> list[StoredTransaction]:
        return []

    def sync(self) -> None:
        end = self.log.committed_end
        self.log.sync()
        self._durable = end

    def close(self) -> None:
        self.log.close()


class LocalChainStoreFactory(ChainStoreFactory):
    """Chains as redo logs of ``logs`` (a ``FileRedoLogFactory`` over the data directory)."""

    def __init__(self, logs: RedoLogFactory) -> None:
        self.logs = logs

    def exists(self, chain: str) -> bool:
        return self.logs.exists(chain)

    def create(self, chain: str, header: bytes) -> ChainStore:
        try:
            return LocalChainStore(chain, self.logs.create(chain, header))
        except LogExists:
            raise StoreExists(f"chain {chain!r} exists") from None
        except LogError as exc:
            raise StoreError(f"chain {chain!r} cannot be created: {exc}") from None

    def open(self, chain: str) -> ChainStore:
        try:
            return LocalChainStore(chain, self.logs.open(chain))
        except LogNotFound:
            raise StoreNotFound(f"no chain {chain!r}") from None
        except LogError as exc:
            raise StoreError(f"chain {chain!r} cannot be opened: {exc}") from None

    def remove(self, chain: str) -> None:
        with contextlib.suppress(LogNotFound):
            self.logs.remove(chain)
