"""Port of a chain server's storage of one chain (docs/adr/0022-jetstream-chain-store.md):
``ChainStore``, the factory that opens and creates one per chain, their records and errors.

What a hosted chain needs of its storage and nothing more: the chain header, append a
transaction given the end the writer expects (so two servers over one store can never fork a
chain), read transactions from a resumable position, the end and the durable end, and catch up
with what other writers appended.

Adapters: ``adapters.chain_store_local.LocalChainStoreFactory`` (a redo log per chain, ADR 0003)
and ``adapters.chain_store_nats.NatsChainStoreFactory`` (a subject of a replicated JetStream
stream); twin: ``adapters.memory.chain_store.MemoryChainStoreFactory``. Contract:
tests/contract/test_chain_store_contract.py."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


class StoreError(Exception):
    """Base of the errors a chain store raises; the message is meant for a human."""


class StoreNotFound(StoreError):
    """The chain does not exist in the store (``ChainStoreFactory.open``)."""


class StoreExists(StoreError):
    """The chain exists already (``ChainStoreFactory.create``): someone created it first."""


class StoreConflict(StoreError):
    """``append`` was given an expected end that is not the chain's end: another writer appended
    first. Nothing was stored; ``catch_up`` brings the store to the chain's end."""

    def __init__(self, message: str, *, end: int | None = None) -> None:
        super().__init__(message)
        #: the chain's end as the store found it, when it knows (None: ask ``catch_up``)
        self.end = end


class StoreUnavailable(StoreError):
    """The store cannot be reached or refused the operation for a reason of its own (a cluster
    without quorum, a timeout). Whether an ``append`` that raised it was stored is unknown until
    ``catch_up`` tells."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record of a transaction: metadata, format byte, data (None: none), the commit flag
    (set on the last record, the seal, only)."""

    meta: bytes
    fmt: int
    data: bytes | None
    commit: bool


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A transaction as stored: at [position, end), its records at ``positions``."""

    position: int
    end: int
    records: tuple[StoredRecord, ...]
    positions: tuple[int, ...]


class ChainStore(abc.ABC):
    """The stored history of one chain: its header and its transactions, in one order every
    reader sees.

    Positions are opaque, ascending, and the same for every store of the chain (whoever opened
    it, on whichever server); a transaction's position and every ``end`` are resumable. A
    transaction is stored whole or not at all.
    """

    name: str

    @property
    @abc.abstractmethod
    def header(self) -> bytes:
        """The header body given to ``create``, byte for byte."""

    @property
    @abc.abstractmethod
    def start(self) -> int:
        """The position of the chain's first transaction (the end of an empty chain)."""

    @property
    @abc.abstractmethod
    def end(self) -> int:
        """Where the next transaction goes, as far as this store knows (its own appends and what
        ``catch_up`` and ``read`` brought)."""

    @property
    @abc.abstractmethod
    def durable_end(self) -> int:
        """How far the chain is known to survive a crash of this process (fsynced, or
        acknowledged by a quorum of replicas). Never beyond ``end``."""

    @abc.abstractmethod
    def append(self, records: Sequence[StoredRecord], expected_end: int) -> StoredTransaction:
        """Store one transaction (the last record, and only it, has ``commit``) at
        ``expected_end``, which must be the chain's end: otherwise ``StoreConflict`` and nothing
        is stored. ``ValueError`` for records that are not one transaction."""

    @abc.abstractmethod
    def read(self, start: int, limit: int | None = None) -> Iterator[StoredTransaction]:
        """The transactions from ``start`` (a transaction's position or an end this store gave)
        up to ``limit`` (an end; default this store's ``end``). ``start`` must be resumable:
        the caller checks it (ChainHost keeps the boundaries); a store that numbers its
        transactions raises ``StoreError`` for any other."""

    @abc.abstractmethod
    def catch_up(self) -> list[StoredTransaction]:
        """The transactions other writers appended after this store's ``end``, in order (empty
        when none); ``end`` moves past them. Blocking: it asks the backend for the chain's end."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make everything appended so far durable (``durable_end`` becomes ``end``)."""

    def watch(self, wake: Callable[[], None]) -> None:  # noqa: B027 - optional
        """Call ``wake`` (from any thread, without arguments) whenever another writer may have
        appended; the caller then calls ``catch_up``. A store with one writer never calls it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the store holds (files, subscriptions). Idempotent."""


class ChainStoreFactory(abc.ABC):
    """Opens and creates the stores of chains by name."""

    @abc.abstractmethod
    def exists(self, chain: str) -> bool:
        """Whether the chain exists in the store."""

    @abc.abstractmethod
    def create(self, chain: str, header: bytes) -> ChainStore:
        """A new, empty chain with ``header``; ``StoreExists`` when it exists (also when another
        writer created it a moment before)."""

    @abc.abstractmethod
    def open(self, chain: str) -> ChainStore:
        """The existing chain; ``StoreNotFound`` when there is none. The store knows the chain
        up to some end at or after ``start`` and at or before the chain's: ``read`` from
        ``start`` gives what it knows, ``catch_up`` the rest (so a reader replays a chain with
        ``read(start)`` then ``catch_up()``, reading each transaction once)."""

    @abc.abstractmethod
    def remove(self, chain: str) -> None:
        """Delete the chain (a chain whose genesis was refused); no error when there is none."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections shared by the stores (after the stores are closed)."""
