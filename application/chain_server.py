"""The chain server's logic over ports: chains hosted by name, each a redo log the server
validates every transaction into, and the protocol state of each client connection.

Synchronous and free of any event loop (ADR 0002): the websocket adapter
(``adapters/ws_server.py``) reads frames, calls a ``Peer``, sends what ``Peer.next_output``
hands it, runs ``ChainHost.sync`` off the loop and reports its end with ``made_durable``.

Trust (ADR 0004, 0008, 0015): the server holds no key that decrypts and never needs a passcode.
A transaction is accepted when its events parse, each event and the seal carry only what the
allow-list of domain/trust.py admits (one object written or deleted per event; signatures and a
timestamp on the seal; no replica bookkeeping such as ``LocalSeal``, ``Origin`` or ``Uploaded``),
none of its events is already in the chain, every signature verifies against the chain's public
keys and covers exactly this transaction (its seal included), its signers may write what it
writes (the chain root write key is the header's ``root_key_hash``), and no timestamp lies
further in the future than the tolerance. Replicas run the same rules on what they receive.

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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec

from application.lock_server import ChainLocks, LockConfig, LockSession
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
from application.server_stats import ServerStats
from application.session import ChainHeader, ChainIntegrityError
from domain.chain import (
    AuthorizationValidator,
    ChainIndex,
    Located,
    Pipeline,
    ShapeValidator,
    SignatureValidator,
    TimestampValidator,
    Transaction,
    Validator,
)
from domain.errors import DomainError
from domain.events import EventHeader, parse_header
from domain.hashing import EMPTY_HASH, sha256_of
from domain.wire import (
    DISK_FULL_REASON,
    PROTOCOL_VERSIONS,
    Commit,
    CommitError,
    CommitRecord,
    Confirmed,
    EndOfHistory,
    Events,
    Hello,
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockSync,
    LockTest,
    ReadOnly,
    ServerLimits,
    ServerMessage,
    Subscribe,
    Unlock,
    VersionMismatch,
    Welcome,
    WireRecord,
    negotiate,
)

_log = logging.getLogger("wasmer_dfs.server")

#: a full disk (or quota) under the server's logs: the commit is refused, the chain stays up
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

MAX_HEADER_BODY = 64 * 1024


class Refused(Exception):
    """The connection must end: the reason goes to the client in ``Fatal``."""

    @property
    def reason(self) -> str:
        return str(self)


class TransactionRefused(Exception):
    """A client's transaction refused by the server's rules (nothing of it was written): the
    reason goes in ``CommitError``. (The client side of the same refusal is
    ``application.replication.CommitRejected``.)"""

    @property
    def reason(self) -> str:
        return str(self)


class HostBroken(Refused):
    """The chain's log failed under a write; every connection to it ends, and the next one
    reopens the log (which cuts the unfinished transaction)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: a subscriber whose live stream lags the durable end by more than this is disconnected
    max_lag_bytes: int = 64 * 1024 * 1024
    #: seconds a single frame may take to leave before the client counts as too slow
    send_timeout: float = 30.0
    #: seconds a new connection has to send its Hello
    hello_timeout: float = 10.0
    #: whether a client may create a chain (header + genesis) on this server
    create_chains: bool = True
    #: serve history and live events, but refuse every commit
    read_only: bool = False
    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    #: leases, grace period and limits of distributed locks (docs/adr/0010)
    locks: LockConfig = field(default_factory=LockConfig)

    @property
    def welcome_limits(self) -> ServerLimits:
        """The limits told in ``Welcome`` (with the lock lease)."""
        return msgspec.structs.replace(
            self.limits, lock_lease_ms=max(1, round(self.locks.lease * 1000))
        )


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an accepted transaction lies in the server's log: [position, end)."""

    position: int
    end: int


def check_header(body: bytes) -> ChainHeader:
    """A client's chain header body, decoded and sanity-checked; ``Refused`` otherwise."""
    if len(body) > MAX_HEADER_BODY:
        raise Refused(f"the chain header is too large ({len(body)} > {MAX_HEADER_BODY} bytes)")
    try:
        header = ChainHeader.decode(body)
    except ChainIntegrityError as exc:
        raise Refused(str(exc)) from None
    if not 8 <= len(header.chain_id) <= 64:
        raise Refused("the chain header's chain id must be 8 to 64 bytes")
    if header.root_key_hash is not None and len(header.root_key_hash) != 32:
        raise Refused("the chain header's root key hash must be 32 bytes")
    if header.kdf is not None:
        try:
            header.kdf.check()  # a chain no mount could open, or only at an absurd cost
        except ChainIntegrityError as exc:
            raise Refused(str(exc)) from None
    return header


def _parse(meta: bytes, fmt: int, data: bytes | None) -> EventHeader:
    return parse_header(meta, fmt, sha256_of(data) if data is not None else EMPTY_HASH)


# --- one chain ---------------------------------------------------------------------------------
class ChainState:
    """What the server knows of a chain to validate the next transaction: the index, the hashes
    of every event accepted, and the validators (no log: see ``ChainHost``)."""

    def __init__(
        self, header: ChainHeader, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> None:
        self.header = header
        self.clock = clock
        self.config = config
        self.index = ChainIndex(chain_id=header.chain_id, root_write=header.root_write)
        signatures = SignatureValidator(crypto.verify, legacy=header.version < 2)
        self._shape = ShapeValidator(local=False)
        self._authz = AuthorizationValidator([signatures])
        self._seen: set[bytes] = set()

    def transaction(self, records: Sequence[CommitRecord]) -> Transaction:
        """The transaction of a client's records (events not located yet)."""
        if not records:
            raise TransactionRefused("a transaction needs at least its seal")
        if records[-1].data is not None:
            raise TransactionRefused("the seal (last record) of a transaction carries no data")
        headers: list[EventHeader] = []
        for i, rec in enumerate(records):
            try:
                hdr = _parse(rec.meta, rec.fmt, rec.data)
            except DomainError as exc:
                raise TransactionRefused(f"record {i} is malformed: {exc}") from None
            headers.append(hdr)
        return Transaction(tuple(Located(hdr, None) for hdr in headers[:-1]), headers[-1])

    def check_new(self, tx: Transaction) -> None:
        """Every rule for a transaction a client sends; ``TransactionRefused`` with the reason."""
        if not tx.events:
            if not tx.signatures:
                raise TransactionRefused("an empty transaction must carry a signature")
            if self.index.attested == self.index.head:
                raise TransactionRefused(
                    "the chain's head is attested already (a replayed attestation)"
                )
        fresh: set[bytes] = set()
        for ev in tx.events:
            eh = ev.header.hash
            if eh in self._seen or eh in fresh:
                raise TransactionRefused(
                    f"event {eh.hex()[:16]} is already in the chain (a replayed transaction)"
                )
            fresh.add(eh)
        tolerance = self.config.limits.tolerance_ms
        self.check(
            tx, [self._shape, self._authz, TimestampValidator(self.clock.now_ms(), tolerance)]
        )

    def check_stored(self, tx: Transaction) -> None:
        """The rules a transaction of the server's own log must still pass at replay."""
        self.check(tx, [self._shape, self._authz])

    def check(self, tx: Transaction, validators: Sequence[Validator]) -> None:
        try:
            Pipeline(validators).check(self.index, tx)
        except DomainError as exc:
            raise TransactionRefused(str(exc)) from None

    def apply(self, tx: Transaction) -> None:
        if not tx.events and tx.signatures:
            self.index.attested = self.index.head
        for ev in tx.events:
            self.index.apply(ev)
            self._seen.add(ev.header.hash)


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


# --- the server --------------------------------------------------------------------------------
class ChainServer:
    """The chains a server hosts: opened on first use, closed when their last client leaves."""

    def __init__(
        self, logs: RedoLogFactory, crypto: Crypto, clock: Clock, config: ServerConfig
    ) -> None:
        self.logs = logs
        self.crypto = crypto
        self.clock = clock
        self.config = config
        self.hosts: dict[str, ChainHost] = {}
        self._users: dict[ChainHost, int] = {}
        #: lock state by chain name: it outlives the chain's host (a client's locks stay for
        #: its lease after its connection ended, even when nobody else uses the chain)
        self.locks: dict[str, ChainLocks] = {}
        #: after a (re)start, only reclaims are granted until then (ADR 0010)
        self.grace_until = clock.monotonic() + config.locks.grace_seconds
        #: what the server has done, counted (serve --metrics)
        self.stats = ServerStats()

    def loaded(self, name: str) -> ChainHost | None:
        host = self.hosts.get(name)
        if host is not None and host.broken is not None:
            self._drop(name)
            return None
        return host

    def load(self, name: str) -> ChainHost | None:
        """Open the chain's log (blocking); register the host with ``adopt``."""
        return ChainHost.open(self.logs, name, self.crypto, self.clock, self.config)

    def adopt(self, host: ChainHost) -> ChainHost:
        """Register a loaded host, unless another was registered meanwhile (then that one)."""
        current = self.loaded(host.name)
        if current is not None:
            host.close()
            return current
        self.hosts[host.name] = host
        return host

    def create(
        self, name: str, header_body: bytes, records: Sequence[CommitRecord]
    ) -> tuple[ChainHost, Appended]:
        if not self.config.create_chains:
            raise Refused("this server does not create chains")
        if self.config.read_only:
            raise Refused("the server is read-only: it creates no chains")
        host, appended = ChainHost.create(
            self.logs, name, header_body, records, self.crypto, self.clock, self.config
        )
        self.hosts[name] = host
        self.stats.chains_created += 1
        _log.info("created chain %s (chain id %s)", name, host.header.chain_id.hex())
        return host, appended

    def attach(self, host: ChainHost) -> None:
        self._users[host] = self._users.get(host, 0) + 1

    def detach(self, host: ChainHost) -> bool:
        """One user of the chain left; True when it has none now (the adapter then makes it
        durable and calls ``close_host``)."""
        left = self._users.get(host, 0) - 1
        if left > 0:
            self._users[host] = left
            return False
        self._users.pop(host, None)
        return True

    def in_use(self, host: ChainHost) -> bool:
        return self._users.get(host, 0) > 0

    def close_host(self, host: ChainHost) -> None:
        """Close a chain nobody uses (a broken one is closed whoever still holds it)."""
        if self.in_use(host) and host.broken is None:
            return
        if self.hosts.get(host.name) is host:
            del self.hosts[host.name]
        host.close()

    # -- locks ---------------------------------------------------------------------------------
    def chain_locks(self, name: str) -> ChainLocks:
        state = self.locks.get(name)
        if state is None:

            def durable_end() -> int | None:
                host = self.hosts.get(name)
                return host.durable_end if host is not None and host.broken is None else None

            state = self.locks[name] = ChainLocks(
                self.clock, self.config.locks, grace_until=self.grace_until, durable_end=durable_end
            )
        return state

    def lock_tick(self) -> None:
        """Expire lock leases, end the grace period; forget the lock state of chains nobody
        holds a session of (called every fraction of a lease by the adapter)."""
        for name, state in list(self.locks.items()):
            state.tick()
            if state.empty:
                del self.locks[name]

    def _drop(self, name: str) -> None:
        host = self.hosts.pop(name, None)
        if host is not None:
            host.close()

    def close(self) -> None:
        for name in list(self.hosts):
            self._drop(name)


# --- one connection ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _OwnCommit:
    """A commit this connection sent, appended at ``position``..``end`` of the log and awaiting
    its confirmation (sent once the chain's durable end passes ``end``)."""

    tx_id: int
    position: int
    end: int


class Peer:
    """The protocol state of one client connection (sans I/O).

    The adapter feeds it the client's messages (``hello`` first, then ``handle``) and sends
    whatever ``next_output`` returns, one message at a time, until it returns None; then it
    waits for ``wakeup`` (called when the chain's durable end moves, a notice is queued, or the
    host breaks). The stream to a subscriber is the server's log in order from its cursor,
    durable records only; a transaction this connection committed is not echoed but replaced
    by its ``Confirmed`` at its place in the stream.
    """

    def __init__(self, server: ChainServer, chain: str, wakeup: Callable[[], None]) -> None:
        self.server = server
        self.chain = chain
        self.wakeup = wakeup
        self.version = 0
        self.host: ChainHost | None = None
        self.header_body: bytes | None = None  # the client's, for a chain not created yet
        self.notices: deque[ServerMessage] = deque()
        self.own: deque[_OwnCommit] = deque()
        self.cursor: int | None = None  # None: not subscribed
        self.history_end = 0
        self.end_of_history_sent = False
        self.too_slow = False
        self._attached = False
        self.client_id: bytes | None = None
        self.lock_session: LockSession | None = None
        self.lock_expired: str | None = None
        self._counted_closed = False
        server.stats.connections_opened += 1

    # -- incoming --------------------------------------------------------------------------------
    def hello(self, msg: Hello, host: ChainHost | None) -> Welcome:
        """Answer the first frame; ``host`` is the chain's loaded host, or None when the server
        does not have the chain."""
        if msg.chain != self.chain:
            raise Refused(f"the Hello names chain {msg.chain!r} but the URL {self.chain!r}")
        try:
            self.version = negotiate(msg.versions, self.server.config.versions)
        except VersionMismatch as exc:
            raise Refused(str(exc)) from None
        self.client_id = msg.client_id
        limits = self.server.config.welcome_limits
        if host is None:
            if msg.header is None:
                raise Refused(f"chain {self.chain!r} does not exist on this server")
            if not self.server.config.create_chains or self.server.config.read_only:
                raise Refused(f"chain {self.chain!r} does not exist and this server creates none")
            check_header(msg.header)
            self.header_body = msg.header
            return Welcome(self.version, self.chain, None, 0, limits)
        if msg.header is not None:
            self._same_chain(host, msg.header)
        self._attach(host)
        if self.server.config.read_only:
            self.notices.append(ReadOnly("the server is read-only: commits are refused"))
        return Welcome(self.version, self.chain, host.header_body, host.durable_end, limits)

    def _same_chain(self, host: ChainHost, body: bytes) -> None:
        theirs = check_header(body)
        if (theirs.chain_id, theirs.root_key_hash) != (
            host.header.chain_id,
            host.header.root_key_hash,
        ):
            raise Refused(
                f"this server holds another chain under the name {self.chain!r} (chain id"
                f" {host.header.chain_id.hex()}, yours {theirs.chain_id.hex()})"
            )

    def _attach(self, host: ChainHost) -> None:
        self.host = host
        host.add_listener(self._on_host)
        self.server.attach(host)
        self._attached = True

    def handle(self, msg: object) -> None:
        """A message after the Hello; ``Refused`` ends the connection."""
        if isinstance(msg, Commit):
            self._commit(msg)
        elif isinstance(msg, Subscribe):
            self._subscribe(msg)
        elif isinstance(msg, Lock | Unlock | LockCancel | LockTest | LockSync | LockRenew):
            self._lock(msg)
        elif isinstance(msg, Hello):
            raise Refused("a second Hello on one connection")
        else:
            raise Refused(f"unexpected message {type(msg).__name__}")
        self.wakeup()

    # -- locks ---------------------------------------------------------------------------------
    def _lock(self, msg: Lock | Unlock | LockCancel | LockTest | LockSync | LockRenew) -> None:
        locks = self.server.chain_locks(self.chain)
        if self.lock_expired is not None:
            return  # this connection is ending
        session = self.lock_session
        if session is None or session.closed:
            session = self.lock_session = locks.attach(
                self.client_id, self._lock_answer, self._lock_lease_expired
            )
        answer = locks.handle(session, msg)
        self.server.stats.lock_requests += 1
        if answer is not None:
            self.notices.append(answer)
        elif isinstance(msg, Lock):
            self.server.stats.lock_waits += 1

    def _lock_answer(self, msg: LockResult) -> None:
        self.notices.append(msg)
        self.wakeup()

    def _lock_lease_expired(self, reason: str) -> None:
        self.lock_expired = reason
        self.lock_session = None
        self.wakeup()

    def _subscribe(self, msg: Subscribe) -> None:
        if self.cursor is not None:
            raise Refused("already subscribed")
        if self.host is None:
            existing = self.server.loaded(self.chain)  # created by another client since Hello?
            if existing is None or self.header_body is None:
                raise Refused(
                    f"chain {self.chain!r} does not exist yet: commit its genesis transaction first"
                )
            self._same_chain(existing, self.header_body)
            self._attach(existing)
            assert self.host is not None
        self.cursor = self.host.resolve(msg.from_position)
        self.history_end = self.host.durable_end

    def _commit(self, msg: Commit) -> None:
        try:
            if self.host is None:
                self._create(msg)
                return
            appended = self.host.commit(msg.records)
        except TransactionRefused as exc:
            self.server.stats.commits_refused += 1
            self.notices.append(CommitError(msg.tx_id, exc.reason))
            return
        self._stored(msg)
        self.own.append(_OwnCommit(msg.tx_id, appended.position, appended.end))

    def _stored(self, msg: Commit) -> None:
        stats = self.server.stats
        stats.commits += 1
        stats.events += len(msg.records)
        stats.bytes_committed += sum(len(r.meta) + len(r.data or b"") for r in msg.records)

    def _create(self, msg: Commit) -> None:
        assert self.header_body is not None
        existing = self.server.loaded(self.chain)
        if existing is None and self.server.logs.exists(self.chain):
            loaded = self.server.load(self.chain)  # rare: blocking on the loop
            existing = self.server.adopt(loaded) if loaded is not None else None
        if existing is not None:  # created by another client since our Hello
            self._same_chain(existing, self.header_body)
            self._attach(existing)
            appended = existing.commit(msg.records)
        else:
            host, appended = self.server.create(self.chain, self.header_body, msg.records)
            self._attach(host)
        self._stored(msg)
        self.own.append(_OwnCommit(msg.tx_id, appended.position, appended.end))

    # -- flow control ----------------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Answers owed to the client (pending commits and queued notices): the adapter stops
        reading frames while this reaches ``limits.max_pending_commits``."""
        return len(self.own) + len(self.notices)

    @property
    def unsynced(self) -> bool:
        """Whether this connection's chain has appended records that are not durable yet."""
        return self.host is not None and self.host.committed_end > self.host.durable_end

    def _on_host(self) -> None:
        host = self.host
        if (
            host is not None
            and self.end_of_history_sent
            and self.cursor is not None
            and host.durable_end - self.cursor > self.server.config.max_lag_bytes
        ):
            self.too_slow = True
        self.wakeup()

    # -- outgoing --------------------------------------------------------------------------------
    def next_output(self) -> ServerMessage | None:
        """The next message to send, or None when there is nothing until the next wakeup.
        ``Refused`` when the connection must end (too slow, chain broken)."""
        if self.too_slow:
            raise Refused("too slow")
        if self.lock_expired is not None:
            raise Refused(self.lock_expired)
        if self.notices:
            return self.notices.popleft()
        host = self.host
        if host is None:
            return None
        if host.broken is not None:
            raise HostBroken(host.broken)
        durable = host.durable_end
        own = self.own[0] if self.own else None
        cursor = self.cursor
        if own is not None and (cursor is None or own.position < cursor) and own.end <= durable:
            self.own.popleft()  # committed before subscribing from a later position
            return Confirmed(own.tx_id, own.position, own.end)
        if cursor is None:
            return None
        if not self.end_of_history_sent and cursor >= self.history_end:
            self.end_of_history_sent = True
            return EndOfHistory(cursor)
        if cursor >= durable:
            return None
        limit = durable if self.end_of_history_sent else min(durable, self.history_end)
        if own is not None:
            if own.position == cursor:
                self.own.popleft()
                self.cursor = own.end
                return Confirmed(own.tx_id, own.position, own.end)
            limit = min(limit, own.position)
        batch = host.read_batch(cursor, limit)
        self.cursor = batch.end
        return batch

    def close(self) -> bool:
        """Detach from the chain; True when the chain has no users left."""
        if not self._counted_closed:
            self._counted_closed = True
            self.server.stats.connections_closed += 1
        if self.lock_session is not None:
            state = self.server.locks.get(self.chain)
            if state is not None:
                state.detach(self.lock_session, self._lock_answer)
            self.lock_session = None
        if not self._attached or self.host is None:
            return False
        self._attached = False
        self.host.remove_listener(self._on_host)
        return self.server.detach(self.host)
