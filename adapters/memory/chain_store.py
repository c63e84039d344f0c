"""Twin of ``ChainStoreFactory`` (application/ports/chain_store.py): chains in memory, numbered
as the JetStream store numbers them (adapters/chain_store_index.py). Several stores opened from
one factory share a chain, as several servers share a JetStream stream: each knows the chain up
to its own ``end`` and learns the rest through ``catch_up``, so races are testable without a
cluster."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from adapters.chain_store_index import check_transaction, index_at, numbered, position_of
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


class _Chain:
    def __init__(self, header: bytes) -> None:
        self.header = header
        self.transactions: list[tuple[StoredRecord, ...]] = []
        self.watchers: list[Callable[[], None]] = []


class MemoryChainStore(ChainStore):
    def __init__(self, factory: MemoryChainStoreFactory, name: str, chain: _Chain) -> None:
        self.name = name
        self._factory = factory
        self._chain = chain
        with factory.lock:
            self._known = len(chain.transactions)
        self._durable = self._known
        self._closed = False
        self._watcher: Callable[[], None] | None = None

    @property
    def header(self) -> bytes:
        return self._chain.header

    @property
    def start(self) -> int:
        return position_of(1)

    @property
    def end(self) -> int:
        return position_of(self._known + 1)

    @property
    def durable_end(self) -> int:
        return position_of(self._durable + 1)

    def append(self, records: Sequence[StoredRecord], expected_end: int) -> StoredTransaction:
        check_transaction(records)
        self._check_open()
        with self._factory.lock:
            actual = position_of(len(self._chain.transactions) + 1)
            if expected_end != actual or expected_end != self.end:
                raise StoreConflict(
                    f"chain {self.name!r} ends at {actual}, not at {expected_end}", end=actual
                )
            self._chain.transactions.append(tuple(records))
            self._known = len(self._chain.transactions)
            watchers = [w for w in self._chain.watchers if w is not self._watcher]
        for wake in watchers:
            wake()
        return numbered(self._known, records)

    def read(self, start: int, limit: int | None = None) -> Iterator[StoredTransaction]:
        self._check_open()
        first = index_at(start)
        last = self._known if limit is None else index_at(limit) - 1
        if first > self._known + 1 or last > self._known:
            raise StoreError(f"position {max(start, limit or 0)} lies beyond the end {self.end}")
        with self._factory.lock:
            txs = self._chain.transactions[first - 1 : last]
        for i, records in enumerate(txs, start=first):
            yield numbered(i, records)

    def catch_up(self) -> list[StoredTransaction]:
        self._check_open()
        with self._factory.lock:
            new = self._chain.transactions[self._known :]
            first = self._known + 1
            self._known = len(self._chain.transactions)
        return [numbered(i, r) for i, r in enumerate(new, start=first)]

    def sync(self) -> None:
        self._durable = self._known

    def watch(self, wake: Callable[[], None]) -> None:
        with self._factory.lock:
            self._watcher = wake
            self._chain.watchers.append(wake)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store of chain {self.name!r} is closed")

    def close(self) -> None:
        self._closed = True
        with self._factory.lock:
            if self._watcher in self._chain.watchers:
                self._chain.watchers.remove(self._watcher)


class MemoryChainStoreFactory(ChainStoreFactory):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._chains: dict[str, _Chain] = {}

    def exists(self, chain: str) -> bool:
        with self.lock:
            return chain in self._chains

    def create(self, chain: str, header: bytes) -> ChainStore:
        with self.lock:
            if chain in self._chains:
                raise StoreExists(f"chain {chain!r} exists")
            self._chains[chain] = _Chain(bytes(header))
        return MemoryChainStore(self, chain, self._chains[chain])

    def open(self, chain: str) -> ChainStore:
        with self.lock:
            found = self._chains.get(chain)
        if found is None:
            raise StoreNotFound(f"no chain {chain!r}")
        return MemoryChainStore(self, chain, found)

    def remove(self, chain: str) -> None:
        with self.lock:
            self._chains.pop(chain, None)
