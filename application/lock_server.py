"""The lock state of one chain on the chain server: sessions, leases, grants, waiters, the grace
period after a restart and the coherence positions (docs/adr/0010-lock-protocol.md).

Sans I/O and synchronous like the rest of the server's logic: ``Peer`` (application/chain_server)
hands it the lock messages of its connection; answers that come later (a waiter granted because
another client unlocked) go to the waiting session's ``notify`` callback; the websocket adapter
calls ``tick`` now and then to expire leases and end the grace period.

* **Sessions.** A client names its session with ``Hello.client_id``. Locks belong to the session
  (``(session number, owner)`` in the table), not to a connection: a reconnect with the same id
  finds them again. A session's lease runs out ``lease`` seconds after the server last heard
  from it (any lock message renews it); then its locks, and only its locks, are freed. A session
  without a client id ends with its connection.
* **Grace.** After a server start, for ``grace`` seconds, only reclaims (``LockSync`` with
  ``reclaim``) are granted; every other request and test waits for the end of grace, so a lock a
  client still holds from before the restart is reclaimed before anybody else can take it.
* **Coherence.** A release (``Unlock``, a downgrade, a ``LockSync`` that drops locks) carries the
  server log position that covers the holder's writes; the server keeps the highest per object
  key (folded into a chain-wide floor once the key is idle) and every grant carries it: the new
  holder applies the log up to there before it uses the lock.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from application.ports import Clock
from domain.locks import EOF, Held, Kind, LockTable, Waiter
from domain.wire import (
    Lock,
    LockCancel,
    LockMessage,
    LockRenew,
    LockResult,
    LockSpan,
    LockStatus,
    LockSync,
    LockTest,
    Unlock,
)

_log = logging.getLogger("wasmer_dfs.locks")

Owner = tuple[int, int]  # (session number, the client's owner)
TableKey = tuple[int, bool]  # (object key, flock?)


@dataclass(frozen=True, slots=True)
class LockConfig:
    #: seconds after the last message from a client before its locks are freed
    lease: float = 10.0
    #: seconds after the server's start during which only reclaims are granted (None: lease)
    grace: float | None = None
    #: requests one session may have waiting at a time
    max_waiting: int = 1024
    #: locks (ranges) one chain may hold in all
    max_locks: int = 1_000_000

    @property
    def grace_seconds(self) -> float:
        return self.lease if self.grace is None else self.grace


@dataclass(eq=False, slots=True)
class LockSession:
    number: int
    client_id: bytes | None
    #: where answers that come later go; None while no connection holds the session
    notify: Callable[[LockResult], None] | None
    #: called (with the reason) when the connection holding the session must end: the lease ran
    #: out, or a newer connection of the same client took the session over
    expired: Callable[[str], None] | None
    renewed: float
    waiting: dict[int, Waiter[TableKey, Owner]] = field(default_factory=dict)
    closed: bool = False


class ChainLocks:
    """The locks of one chain. ``durable_end`` tells how far the chain's log is durable (None:
    unknown, the chain is not loaded): release positions are clamped to it."""

    def __init__(
        self,
        clock: Clock,
        config: LockConfig,
        *,
        grace_until: float = float("-inf"),
        durable_end: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.config = config
        self.grace_until = grace_until
        self.durable_end = durable_end
        self.table: LockTable[TableKey, Owner] = LockTable()
        self.sessions: dict[int, LockSession] = {}
        self._by_client: dict[bytes, LockSession] = {}
        self._numbers = itertools.count(1)
        self._deferred: deque[tuple[LockSession, LockMessage]] = deque()
        #: highest release position per object key; ``floor`` covers every other key
        self.positions: dict[int, int] = {}
        self.floor = durable_end() or 0

    # -- sessions --------------------------------------------------------------------------------
    @property
    def in_grace(self) -> bool:
        return self.clock.monotonic() < self.grace_until

    @property
    def empty(self) -> bool:
        return not self.sessions

    def attach(
        self,
        client_id: bytes | None,
        notify: Callable[[LockResult], None],
        expired: Callable[[str], None],
    ) -> LockSession:
        """The session of a connection: the client's existing one (its locks kept: a reconnect)
        or a new one. A session still held by another connection is taken over (that
        connection's waiting requests are dropped: its client re-sends them)."""
        now = self.clock.monotonic()
        session = self._by_client.get(client_id) if client_id is not None else None
        if session is not None and not session.closed:
            self._drop_waiting(session)
            if session.expired is not None:
                session.expired("a newer connection of this client took its lock session over")
            session.notify, session.expired, session.renewed = notify, expired, now
            return session
        session = LockSession(next(self._numbers), client_id, notify, expired, now)
        self.sessions[session.number] = session
        if client_id is not None:
            self._by_client[client_id] = session
        return session

    def detach(self, session: LockSession, notify: Callable[[LockResult], None]) -> None:
        """The connection holding ``session`` (with this ``notify``) ended: its waiting requests
        are withdrawn; its locks stay until the lease runs out (at once without a client id)."""
        if session.closed or session.notify != notify:
            return  # taken over by a newer connection meanwhile
        self._drop_waiting(session)
        session.notify = session.expired = None
        if session.client_id is None or not self._holds_any(session):
            self._end(session)

    def _holds_any(self, session: LockSession) -> bool:
        return any(h.owner[0] == session.number for _, h in self.table)

    def _drop_waiting(self, session: LockSession) -> None:
        for w in session.waiting.values():
            self.table.cancel(w)
        session.waiting.clear()
        if any(s is session for s, _ in self._deferred):
            self._deferred = deque((s, m) for s, m in self._deferred if s is not session)

    def _end(self, session: LockSession) -> None:
        """Free the session's locks and forget it."""
        self._drop_waiting(session)
        session.closed = True
        self.sessions.pop(session.number, None)
        if session.client_id is not None and self._by_client.get(session.client_id) is session:
            del self._by_client[session.client_id]
        number = session.number
        dropped = self.table.release_where(lambda o: o[0] == number)
        durable = self.durable_end()
        for tkey, spans in dropped.items():
            if durable is not None and any(h.kind is Kind.WRITE for h in spans):
                # its last writes are whatever reached the server: the next holder sees them
                self._released(tkey[0], durable)
            self._changed(tkey)

    def tick(self) -> None:
        """Expire the sessions whose lease ran out; after the grace period, serve what waited
        for its end."""
        now = self.clock.monotonic()
        for session in [s for s in self.sessions.values() if now - s.renewed > self.config.lease]:
            expired = session.expired
            self._end(session)
            if expired is not None:
                expired("the lock lease expired: the locks of this client were freed")
        if self._deferred and not self.in_grace:
            pending, self._deferred = self._deferred, deque()
            for session, msg in pending:
                if session.closed:
                    continue
                try:
                    answer = self.handle(session, msg)
                except Exception:  # a bug must not stop the others
                    _log.exception("serving a deferred lock request failed")
                    continue
                if answer is not None and session.notify is not None:
                    session.notify(answer)

    # -- requests --------------------------------------------------------------------------------
    def handle(self, session: LockSession, msg: LockMessage) -> LockResult | None:
        """One lock message of the session's connection: its answer now, or None (no answer
        for ``Unlock``; later, through ``notify``, for a waiter or a request deferred by the
        grace period)."""
        if session.closed:
            if isinstance(msg, Unlock):
                return None
            return LockResult(msg.req, LockStatus.REFUSED, reason="the lock lease expired")
        session.renewed = self.clock.monotonic()
        if isinstance(msg, LockRenew):
            return LockResult(msg.req, LockStatus.GRANTED)
        if isinstance(msg, LockCancel):
            return self._cancel(session, msg)
        if isinstance(msg, LockSync):
            return self._sync(session, msg)
        if self.in_grace:
            self._deferred.append((session, msg))
            return None
        if isinstance(msg, Unlock):
            self._unlock(session, msg)
            return None
        if isinstance(msg, LockTest):
            return self._test(session, msg)
        return self._lock(session, msg)

    def _lock(self, session: LockSession, msg: Lock) -> LockResult | None:
        tkey: TableKey = (msg.key, msg.flock)
        owner: Owner = (session.number, msg.owner)
        start, end = (0, EOF) if msg.flock else (msg.start, msg.end)
        kind = Kind(msg.kind)
        if msg.req in session.waiting:
            return LockResult(msg.req, LockStatus.REFUSED, reason="request number in use")
        blocker = self.table.conflict(tkey, owner, kind, start, end)
        if blocker is None:
            if self.table.span_count >= self.config.max_locks:
                return LockResult(msg.req, LockStatus.REFUSED, reason="too many locks")
            downgrade = kind is Kind.READ and self.table.holds_write(tkey, owner, start, end)
            self.table.set(tkey, owner, kind, start, end)
            if downgrade:
                self._released(msg.key, msg.position)
                self._changed(tkey)
            return LockResult(msg.req, LockStatus.GRANTED, self.grant_position(msg.key))
        if not msg.wait:
            return LockResult(msg.req, LockStatus.CONFLICT, holder=self._span(tkey, blocker))
        if not msg.flock and self.table.would_deadlock(owner, blocker):
            return LockResult(msg.req, LockStatus.DEADLOCK, holder=self._span(tkey, blocker))
        if len(session.waiting) >= self.config.max_waiting:
            return LockResult(msg.req, LockStatus.REFUSED, reason="too many waiting requests")
        w = Waiter(tkey, owner, kind, start, end, token=(session, msg.req), posix=not msg.flock)
        self.table.wait(w)
        session.waiting[msg.req] = w
        return None

    def _unlock(self, session: LockSession, msg: Unlock) -> None:
        tkey: TableKey = (msg.key, msg.flock)
        owner: Owner = (session.number, msg.owner)
        start, end = (0, EOF) if msg.flock else (msg.start, msg.end)
        if not self.table.within(tkey, owner, start, end):
            return
        if self.table.holds_write(tkey, owner, start, end):
            self._released(msg.key, msg.position)
        self.table.set(tkey, owner, Kind.UNLOCK, start, end)
        self._changed(tkey)

    def _test(self, session: LockSession, msg: LockTest) -> LockResult:
        tkey: TableKey = (msg.key, msg.flock)
        owner: Owner = (session.number, msg.owner)
        start, end = (0, EOF) if msg.flock else (msg.start, msg.end)
        blocker = self.table.conflict(tkey, owner, Kind(msg.kind), start, end)
        if blocker is None:
            return LockResult(msg.req, LockStatus.GRANTED)
        return LockResult(msg.req, LockStatus.CONFLICT, holder=self._span(tkey, blocker))

    def _cancel(self, session: LockSession, msg: LockCancel) -> LockResult:
        w = session.waiting.pop(msg.req, None)
        if w is not None:
            self.table.cancel(w)
        else:
            self._deferred = deque(
                (s, m)
                for s, m in self._deferred
                if not (s is session and isinstance(m, Lock | LockTest) and m.req == msg.req)
            )
        return LockResult(msg.req, LockStatus.CANCELLED)

    def _sync(self, session: LockSession, msg: LockSync) -> LockResult:
        number = session.number
        before: dict[TableKey, dict[int, list[Held[Owner]]]] = {}
        for tkey, h in list(self.table):
            if h.owner[0] == number:
                before.setdefault(tkey, {}).setdefault(h.owner[1], []).append(h)
        dropped = self.table.release_where(lambda o: o[0] == number)
        touched: set[TableKey] = set(dropped)
        lost: list[int] = []
        may_reclaim = msg.reclaim and self.in_grace
        for i, span in enumerate(msg.held):
            tkey = (span.key, span.flock)
            owner = (number, span.owner)
            start, end = (0, EOF) if span.flock else (span.start, span.end)
            kind = Kind(span.kind)
            had = _covers(before.get(tkey, {}).get(span.owner, []), kind, start, end)
            if had or (may_reclaim and self.table.conflict(tkey, owner, kind, start, end) is None):
                self.table.set(tkey, owner, kind, start, end)
                touched.add(tkey)
            else:
                lost.append(i)
        for tkey, by_owner in before.items():
            for own, spans in by_owner.items():
                for h in spans:
                    if h.kind is Kind.WRITE and not self.table.holds_write(
                        tkey, (number, own), h.start, h.end
                    ):
                        self._released(tkey[0], msg.position)
        for tkey in touched:
            self._changed(tkey)
        return LockResult(msg.req, LockStatus.GRANTED, self.grant_position_all(), lost=lost)

    # -- grants and positions --------------------------------------------------------------------
    def grant_position(self, key: int) -> int:
        return max(self.positions.get(key, 0), self.floor)

    def grant_position_all(self) -> int:
        return max([self.floor, *self.positions.values()])

    def _released(self, key: int, position: int) -> None:
        durable = self.durable_end()
        position = min(position, durable) if durable is not None else 0
        if position > self.positions.get(key, 0):
            self.positions[key] = position

    def _changed(self, tkey: TableKey) -> None:
        """Locks of ``tkey`` were released or downgraded: grant the waiters that can go."""
        for w in self.table.wake(tkey):
            session, req = cast(tuple[LockSession, int], w.token)
            session.waiting.pop(req, None)
            if session.notify is not None:
                session.notify(LockResult(req, LockStatus.GRANTED, self.grant_position(tkey[0])))
        ino = tkey[0]
        if self.table.idle((ino, False)) and self.table.idle((ino, True)):
            pos = self.positions.pop(ino, 0)
            self.floor = max(self.floor, pos)

    @staticmethod
    def _span(tkey: TableKey, h: Held[Owner]) -> LockSpan:
        return LockSpan(tkey[0], h.owner[1], tkey[1], h.start, h.end, int(h.kind))

    # -- inspection (tests, stats) ---------------------------------------------------------------
    def held_by(self, session: LockSession) -> list[LockSpan]:
        return [self._span(tkey, h) for tkey, h in self.table if h.owner[0] == session.number]


def _covers(spans: list[Held[Owner]], kind: Kind, start: int, end: int) -> bool:
    """Whether ``spans`` (sorted, disjoint) cover ``[start, end)`` with exactly ``kind``."""
    at = start
    for h in spans:
        if h.end <= at:
            continue
        if h.start > at or h.kind is not kind:
            return False
        at = h.end
        if at >= end:
            return True
    return at >= end
