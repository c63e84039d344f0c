"""The protocol state of one client connection to the chain server (``Peer``, sans I/O): its
Hello, commits, subscription, locks, and the stream of messages it is owed, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from application.chain_access import Admission
from application.chain_admission import Refused, TransactionRefused, check_header
from application.chain_host import ChainHost, HostBroken
from application.chain_server import ChainServer
from application.lock_server import LockSession
from domain.wire import (
    Commit,
    CommitError,
    Confirmed,
    EndOfHistory,
    Hello,
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockSync,
    LockTest,
    ReadOnly,
    ServerMessage,
    Subscribe,
    Unlock,
    VersionMismatch,
    Welcome,
    negotiate,
)


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
        self.chain = chain  # the stored name once admitted (user and group chains, ADR 0018)
        self.url_chain = chain
        self.admission: Admission | None = None
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
    def admit(self, msg: Hello, nonce: bytes) -> None:
        """Who the Hello says it is, checked over the ``nonce`` the adapter gave, and the
        chain's stored name (application/chain_access.py); before ``hello``."""
        access = self.server.access
        self.admission = (
            Admission(self.url_chain)
            if access is None
            else access.admit(msg, self.url_chain, nonce)
        )
        self.chain = self.admission.chain

    def hello(self, msg: Hello, host: ChainHost | None) -> Welcome:
        """Answer the first frame; ``host`` is the chain's loaded host, or None when the server
        does not have the chain."""
        if msg.chain != self.url_chain:
            raise Refused(f"the Hello names chain {msg.chain!r} but the URL {self.url_chain!r}")
        if self.admission is None:
            self.admit(msg, b"")
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
        access, who = self.server.access, self.admission
        refusal = None if access is None or who is None else access.may_write(who)
        if refusal is not None:
            self.server.stats.commits_refused += 1
            self.notices.append(CommitError(msg.tx_id, refusal))
            return
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
        if existing is None and self.server.exists(self.chain):
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
        access, who = self.server.access, self.admission
        gone = None if access is None or who is None else access.may_read(who)
        if gone is not None:  # removed from the group since the Hello (ADR 0018)
            raise Refused(gone)
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
