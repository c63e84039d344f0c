"""The server's lock state of one chain (application/lock_server.py), sans I/O with a fake clock:
sessions and their leases, take-over by a reconnect, LockSync, the grace period, and the
coherence positions that grants carry."""

from __future__ import annotations

from adapters.clock import FakeClock
from application.lock_server import ChainLocks, LockConfig, LockSession
from domain.locks import EOF
from domain.wire import (
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockSpan,
    LockStatus,
    LockSync,
    LockTest,
    Unlock,
)

INO = 77


class Client:
    def __init__(self, locks: ChainLocks, client_id: bytes | None) -> None:
        self.locks = locks
        self.client_id = client_id
        self.got: list[LockResult] = []
        self.ended: list[str] = []
        self.session: LockSession = locks.attach(client_id, self.got.append, self.ended.append)

    def send(self, msg: object) -> LockResult | None:
        return self.locks.handle(self.session, msg)  # type: ignore[arg-type]

    def status(self, msg: object) -> LockStatus:
        answer = self.send(msg)
        assert answer is not None
        return answer.status


def make(clock: FakeClock, durable: list[int], **kw: float) -> ChainLocks:
    return ChainLocks(clock, LockConfig(lease=10.0), durable_end=lambda: durable[0], **kw)


def test_grants_carry_the_highest_release_position_clamped_to_the_durable_end() -> None:
    clock, durable = FakeClock(), [500]
    locks = make(clock, durable)
    assert locks.floor == 500, "the floor starts at the durable end"
    a, b = Client(locks, b"a"), Client(locks, b"b")
    granted = a.send(Lock(1, INO, 1, 2))
    assert granted is not None and granted.position == 500
    durable[0] = 900
    assert b.send(Lock(1, INO, 1, 1, wait=True)) is None
    a.send(Unlock(INO, 1, position=800))
    assert b.got == [LockResult(1, LockStatus.GRANTED, 800)]
    b.send(Unlock(INO, 1, position=5000))  # a read lock: its position is not recorded
    a.send(Lock(2, INO, 1, 2))
    a.send(Unlock(INO, 1, position=5000))  # beyond the durable end: clamped
    assert locks.floor == 900, "an idle key folds its position into the floor"
    granted = b.send(Lock(2, INO + 1, 1, 1))
    assert granted is not None and granted.position == 900


def test_a_downgrade_records_its_position_and_wakes_readers() -> None:
    clock, durable = FakeClock(), [0]
    locks = make(clock, durable)
    durable[0] = 10_000
    a, b = Client(locks, b"a"), Client(locks, b"b")
    a.send(Lock(1, INO, 1, 2))
    assert b.send(Lock(1, INO, 1, 1, wait=True)) is None
    a.send(Lock(2, INO, 1, 1, position=4096))  # EXCLUSIVE -> SHARED
    assert b.got == [LockResult(1, LockStatus.GRANTED, 4096)]


def test_a_lease_frees_only_its_own_sessions_locks() -> None:
    clock = FakeClock()
    locks = make(clock, [0])
    a, b, c = Client(locks, b"a"), Client(locks, b"b"), Client(locks, b"c")
    a.send(Lock(1, INO, 1, 2))
    c.send(Lock(1, INO + 1, 1, 2))
    b.send(Lock(1, INO, 1, 2, wait=True))
    locks.detach(a.session, a.got.append)
    clock.advance(9)
    for cl in (b, c):
        cl.send(LockRenew(9))
    locks.tick()
    assert b.got == []
    clock.advance(2)
    locks.tick()
    assert b.got == [LockResult(1, LockStatus.GRANTED)]
    assert c.status(LockTest(2, INO + 1, 1, 2)) is LockStatus.GRANTED  # its own lock
    assert b.status(LockTest(3, INO + 1, 1, 1)) is LockStatus.CONFLICT  # c's lock stands


def test_a_silent_connected_session_expires_and_its_connection_is_told() -> None:
    clock = FakeClock()
    locks = make(clock, [0])
    a = Client(locks, b"a")
    a.send(Lock(1, INO, 1, 2))
    clock.advance(11)
    locks.tick()
    assert a.ended and "lease expired" in a.ended[0]
    assert a.session.closed and locks.empty
    assert a.status(Lock(2, INO, 1, 2)) is LockStatus.REFUSED


def test_a_reconnect_takes_the_session_over_and_sync_sets_it_exactly() -> None:
    clock = FakeClock()
    locks = make(clock, [0])
    a = Client(locks, b"a")
    a.send(Lock(1, INO, 1, 2, 0, 10))
    a.send(Lock(2, INO, 2, 1, 0, EOF, flock=True))
    assert a.send(Lock(3, INO + 5, 1, 2)) is not None
    a2 = Client(locks, b"a")  # the same client on a new connection, the old one still open
    assert a.ended and "took its lock session over" in a.ended[0]
    assert a2.session is a.session
    answer = a2.send(
        LockSync(1, [LockSpan(INO, 1, False, 0, 10, 2), LockSpan(INO, 9, False, 50, 60, 1)])
    )
    assert answer is not None and answer.lost == [1], "not in grace: nothing new is reclaimed"
    assert sorted(locks.held_by(a2.session)) == [LockSpan(INO, 1, False, 0, 10, 2)]
    locks.detach(a.session, a.got.append)  # the old connection's end changes nothing now
    assert locks.held_by(a2.session) == [LockSpan(INO, 1, False, 0, 10, 2)]


def test_during_grace_only_reclaims_are_granted() -> None:
    clock = FakeClock()
    locks = make(clock, [0], grace_until=clock.monotonic() + 5)
    a, b = Client(locks, b"a"), Client(locks, b"b")
    assert b.send(Lock(1, INO, 1, 2)) is None, "deferred to the end of grace"
    assert b.send(LockTest(2, INO, 1, 2)) is None
    assert b.send(Lock(3, INO + 1, 1, 2)) is None
    assert b.status(LockCancel(3)) is LockStatus.CANCELLED
    answer = a.send(LockSync(1, [LockSpan(INO, 1, False, 0, EOF, 2)], reclaim=True))
    assert answer is not None and answer.lost == []
    clock.advance(6)
    locks.tick()
    assert [(r.req, r.status) for r in b.got] == [
        (1, LockStatus.CONFLICT),
        (2, LockStatus.CONFLICT),
    ]
    assert a.status(Lock(2, INO + 1, 1, 2)) is LockStatus.GRANTED, "the cancelled one never ran"


def test_a_session_without_client_id_ends_with_its_connection() -> None:
    clock = FakeClock()
    locks = make(clock, [0])
    a, b = Client(locks, None), Client(locks, None)
    a.send(Lock(1, INO, 1, 2))
    assert b.send(Lock(1, INO, 1, 2, wait=True)) is None
    locks.detach(a.session, a.got.append)
    assert b.got == [LockResult(1, LockStatus.GRANTED)]


def test_waiting_requests_go_with_their_connection() -> None:
    clock = FakeClock()
    locks = make(clock, [0])
    a, b = Client(locks, b"a"), Client(locks, b"b")
    a.send(Lock(1, INO, 1, 2))
    assert b.send(Lock(1, INO, 1, 2, wait=True)) is None
    locks.detach(b.session, b.got.append)
    a.send(Unlock(INO, 1))
    assert b.got == [] and locks.table.idle((INO, False))
