"""A hosted chain over a ``ChainStore`` (docs/adr/0022): ``StoreHost`` is the ``ChainHost`` of a
chain that other servers may append to at the same time (JetStream), and ``StoreChainServer``
the ``ChainServer`` whose chains are such hosts.

What differs from a host over its own redo log:

* its state is rebuilt from the store at first use (``read`` from the start, then
  ``catch_up``), each transaction checked as at a replay;
* a commit is validated against the state, then appended at the end the host knows; when
  another server appended first (``StoreConflict``) the host takes in what it appended,
  validates the commit **again** against the new state and retries: what the client is told
  (confirmed or refused) is what was decided against the chain's real order;
* what other servers appended is taken in by ``pull`` (any thread: asks the store) then
  ``absorb`` (on the server's loop: validates, applies, moves the ends and wakes the
  subscribers); the websocket adapter calls them when the store says something is new
  (adapters/store_follower.py);
* durable: what the store acknowledged (a quorum of JetStream replicas); ``sync`` asks the
  store, and the adapter's group commit reports it with ``made_durable`` as before.

Memory as ChainHost's: the chain index, the hashes of accepted events and 8 bytes per
transaction; event data stays in the store.
"""

from __future__ import annotations

import bisect
import logging
import threading
from array import array
from collections.abc import Sequence

from application.chain_admission import ChainState, Refused, TransactionRefused, check_header
from application.chain_host import Appended, ChainHost
from application.chain_server import ChainServer
from application.ports import Clock, Crypto
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
from application.server_config import ServerConfig
from domain.chain import Located, Transaction
from domain.errors import DomainError
from domain.events import parse_header
from domain.hashing import EMPTY_HASH, sha256_of
from domain.wire import CommitRecord, Events, WireRecord

_log = logging.getLogger("wasmer_dfs.server")

#: appends a commit may lose to other servers in a row before its client is asked to retry
MAX_ATTEMPTS = 16


def _stored(records: Sequence[CommitRecord]) -> list[StoredRecord]:
    last = len(records) - 1
    return [StoredRecord(r.meta, r.fmt, r.data, i == last) for i, r in enumerate(records)]


class StoreHost(ChainHost):
    """One chain over a ``ChainStore``; see the module's docstring."""

    def __init__(self, name: str, store: ChainStore, header_body: bytes, state: ChainState) -> None:
        # ChainHost's fields, without a redo log (every method that used it is overridden)
        self.name = name
        self.store = store
        self.header_body = header_body
        self.header = state.header
        self.state = state
        self.config = state.config
        self._boundaries = array("q", [store.start])
        self._end = store.start
        self.durable_end = store.start
        self.broken: str | None = None
        self._listeners = []
        #: the store is used from the loop (commits, reads) and from threads (pull, sync)
        self._lock = threading.Lock()
        #: transactions ``pull`` brought that ``absorb`` has not applied yet
        self._fetched: list[StoredTransaction] = []
        #: appends another server won first (each followed by a new validation)
        self.conflicts = 0

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open_store(
        cls,
        stores: ChainStoreFactory,
        name: str,
        crypto: Crypto,
        clock: Clock,
        config: ServerConfig,
    ) -> StoreHost | None:
        """The chain's host, its state rebuilt from the store; None when there is no such
        chain. Blocking: it reads the whole chain."""
        try:
            store = stores.open(name)
        except StoreNotFound:
            return None
        except StoreError as exc:
            raise Refused(f"the server cannot open chain {name!r}: {exc}") from None
        try:
            state = ChainState(check_header(store.header), crypto, clock, config)
            host = cls(name, store, store.header, state)
            try:
                for stored in store.read(store.start):
                    host._take(stored)
                host.pull()
                host.absorb()
            except StoreError as exc:
                raise Refused(f"chain {name!r} cannot be read from the store: {exc}") from None
            host.durable_end = host._end
        except BaseException:
            store.close()
            raise
        return host

    @classmethod
    def create_store(
        cls,
        stores: ChainStoreFactory,
        name: str,
        header_body: bytes,
        records: Sequence[CommitRecord],
        crypto: Crypto,
        clock: Clock,
        config: ServerConfig,
    ) -> tuple[StoreHost, Appended]:
        """A new chain from a client's header and genesis (validated before anything is
        stored; a refused genesis removes the chain again)."""
        state = ChainState(check_header(header_body), crypto, clock, config)
        tx = state.transaction(records)
        state.check_new(tx)
        root = state.header.root_key_hash
        if root is not None and not any(s.public_key_hash == root for s in tx.signatures):
            raise TransactionRefused(
                "the genesis transaction must be signed by the chain's root key"
            )
        try:
            store = stores.create(name, header_body)
        except StoreExists:
            raise Refused(f"chain {name!r} was created by another client meanwhile") from None
        except StoreError as exc:
            raise Refused(f"the server cannot create chain {name!r}: {exc}") from None
        host = cls(name, store, header_body, state)
        try:
            appended = host.commit(records)
        except TransactionRefused:
            store.close()
            if host.transactions == 0:
                stores.remove(name)  # a chain without its genesis would be no chain
            raise
        except BaseException:
            store.close()
            raise
        return host, appended

    # -- what others appended ------------------------------------------------------------------
    def pull(self) -> None:
        """Ask the store for what other servers appended (blocking; any thread)."""
        with self._lock:
            self._fetched.extend(self.store.catch_up())

    def absorb(self) -> bool:
        """Apply what ``pull`` brought (on the server's loop); True when anything was new. The
        subscribers are woken by the adapter's ``made_durable``."""
        with self._lock:
            fetched, self._fetched = self._fetched, []
        for stored in fetched:
            try:
                self._take(stored)
            except Refused as exc:
                self._break(str(exc))
        return bool(fetched)

    def _take(self, stored: StoredTransaction) -> None:
        """A transaction of the store (another server's, or read at open), checked as at a
        replay and applied."""
        events: list[Located] = []
        try:
            for rec, pos in zip(stored.records, stored.positions, strict=True):
                data_hash = sha256_of(rec.data) if rec.data is not None else EMPTY_HASH
                hdr = parse_header(rec.meta, rec.fmt, data_hash)
                if rec.commit:
                    tx = Transaction(tuple(events), hdr)
                    self.state.check_stored(tx)
                    self.state.apply(tx)
                else:
                    events.append(Located(hdr, None, position=pos))
        except (DomainError, TransactionRefused) as exc:
            raise Refused(
                f"chain {self.name!r} in the store fails validation at {stored.position}: {exc}"
            ) from None
        self._boundaries.append(stored.end)
        self._end = stored.end

    # -- positions -------------------------------------------------------------------------------
    @property
    def start(self) -> int:
        return self._boundaries[0]

    @property
    def committed_end(self) -> int:
        return self._end

    def read_batch(self, cursor: int, limit: int) -> Events:
        self._check_alive()
        max_events = self.config.limits.batch_events
        max_bytes = self.config.limits.batch_bytes
        # the transaction ``cursor`` lies in (a batch may have ended inside one)
        first = self._boundaries[bisect.bisect_right(self._boundaries, cursor) - 1]
        records: list[WireRecord] = []
        size = 0
        end = limit
        try:
            with self._lock:
                transactions = list(self._read(first, limit, max_bytes))
        except StoreError as exc:
            self._break(f"chain {self.name!r} cannot be read from the store: {exc}")
        for stored in transactions:
            for rec, pos in zip(stored.records, stored.positions, strict=True):
                if pos < cursor:
                    continue
                rsize = len(rec.meta) + (len(rec.data) if rec.data is not None else 0)
                if records and (len(records) >= max_events or size + rsize > max_bytes):
                    return Events(records, pos)
                records.append(WireRecord(pos, rec.meta, rec.fmt, rec.data, rec.commit))
                size += rsize
        return Events(records, end)

    def _read(self, start: int, limit: int, max_bytes: int) -> list[StoredTransaction]:
        """Transactions from ``start`` up to ``limit``, stopping once a batch's worth is read."""
        found: list[StoredTransaction] = []
        size = 0
        for stored in self.store.read(start, limit):
            found.append(stored)
            size += sum(len(r.meta) + len(r.data or b"") for r in stored.records)
            if size > max_bytes:
                break
        return found

    # -- committing ------------------------------------------------------------------------------
    def commit(self, records: Sequence[CommitRecord]) -> Appended:
        """Validate a transaction against the chain as the store orders it and append it."""
        self._check_alive()
        if self.config.read_only:
            raise TransactionRefused("the server is read-only")
        for _ in range(MAX_ATTEMPTS):
            self.absorb()
            tx = self.state.transaction(records)
            self.state.check_new(tx)
            try:
                with self._lock:
                    stored = self.store.append(_stored(records), self._end)
            except StoreConflict:
                self.conflicts += 1
                self.pull()  # another server appended first: validate again after its
                continue
            except ValueError as exc:
                raise TransactionRefused(str(exc)) from None
            except StoreError as exc:
                # whether it was stored is unknown: the chain is reopened from the store by the
                # next connection, which tells its client what the chain holds
                self._break(f"appending to chain {self.name!r} failed: {exc}")
            events = tuple(
                Located(ev.header, None, position=pos)
                for ev, pos in zip(tx.events, stored.positions, strict=False)
            )
            self.state.apply(Transaction(events, tx.seal))
            self._boundaries.append(stored.end)
            self._end = stored.end
            return Appended(stored.position, stored.end)
        raise TransactionRefused(
            f"chain {self.name!r} is busy: other servers appended first {MAX_ATTEMPTS} times;"
            " try again"
        )

    # -- durability and closing ------------------------------------------------------------------
    def sync(self) -> None:
        with self._lock:
            self.store.sync()

    def close(self) -> None:
        with self._lock:
            self.store.close()


class StoreChainServer(ChainServer):
    """A chain server whose chains live in a ``ChainStore`` shared with other servers."""

    def __init__(
        self, stores: ChainStoreFactory, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> None:
        super().__init__(None, crypto, clock, config)
        self.stores = stores
        # locks in JetStream KV are not built (issue 16, ADR 0022): say so, every start
        _log.warning(
            "file locks are kept by each server: they hold among the mounts connected to this"
            " server, not against mounts connected to another server over the same store"
        )

    def exists(self, name: str) -> bool:
        return self.stores.exists(name)

    def load(self, name: str) -> ChainHost | None:
        return StoreHost.open_store(self.stores, name, self.crypto, self.clock, self.config)

    def create(
        self, name: str, header_body: bytes, records: Sequence[CommitRecord]
    ) -> tuple[ChainHost, Appended]:
        if not self.config.create_chains:
            raise Refused("this server does not create chains")
        if self.config.read_only:
            raise Refused("the server is read-only: it creates no chains")
        host, appended = StoreHost.create_store(
            self.stores, name, header_body, records, self.crypto, self.clock, self.config
        )
        self.hosts[name] = host
        self.stats.chains_created += 1
        _log.info("created chain %s (chain id %s) in the store", name, host.header.chain_id.hex())
        return host, appended

    def close(self) -> None:
        super().close()
        self.stores.close()
