"""The mount's lock service (application/locks.py) over the in-process coordinator (the
server's lock logic, application/lock_server.py): several ``LockService``s on one
``MemoryLockHub`` are several mounts of one chain. No kernel, no network: conflicts between
mounts, waits, interrupted waits that leave nothing behind (also when the grant raced the
interrupt), flock conversions, deadlocks, close and OFD cleanup, coherence positions, leases,
reconnects and the grace period after a restart."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

import pytest

from adapters.clock import FakeClock
from adapters.memory import MemoryCoordinator, MemoryLockHub
from application.lock_server import LockConfig
from application.locks import LockService
from application.ports import Holder, LockConflict, LockDeadlock, ReplicaSync
from domain.locks import EOF, Kind
from domain.wire import LockSpan, Unlock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
R, W, U = Kind.READ, Kind.WRITE, Kind.UNLOCK
INO = 0x1234_5678_9ABC_DEF2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Mount:
    """A mount: its lock service, its coordinator, and file handles that all point at INO."""

    def __init__(self, hub: MemoryLockHub, name: str, replica: ReplicaSync | None = None) -> None:
        self.coord: MemoryCoordinator = hub.coordinator(name.encode())
        self.inodes: dict[int, int] = {}
        self.svc = LockService(self.coord, self.inodes.__getitem__, replica)
        self.next_fh = 1

    def open(self, ino: int = INO) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.inodes[fh] = ino
        return fh

    def hub_spans(self, hub: MemoryLockHub) -> list[tuple[int, int, bool, int, int, int]]:
        return sorted(
            (s.key, s.owner, s.flock, s.start, s.end, s.kind)
            for s in hub.locks.held_by(self.coord.session)
        )


@pytest.fixture
def hub() -> MemoryLockHub:
    durable = [0]  # the chain's log is empty when the lock state is made ...
    hub = MemoryLockHub(FakeClock(), LockConfig(lease=10.0), durable_end=lambda: durable[0])
    durable[0] = 10**12  # ... and then every position a test uses is durable
    return hub


@pytest.fixture
def mounts(hub: MemoryLockHub) -> Callable[..., Mount]:
    return lambda name, replica=None: Mount(hub, name, replica)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# --- conflicts between mounts and within one ------------------------------------------------------
async def test_locks_conflict_between_mounts_and_coexist_where_they_may(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, 10, wait=False, pid=100)
    with pytest.raises(LockConflict) as exc:
        await b.svc.setlk(fb, 1, W, 5, 6, wait=False)
    assert exc.value.errno == errno.EAGAIN
    assert exc.value.holder == Holder(W, 0, 10, 0)  # another mount's pid is not ours to show
    await b.svc.setlk(fb, 1, R, 10, 20, wait=False)  # touching, not overlapping
    assert await b.svc.getlk(fb, 1, R, 0, EOF) == Holder(W, 0, 10, 0)
    assert await a.svc.getlk(fa, 1, W, 0, EOF) == Holder(R, 10, 20, 0)
    await a.svc.setlk(fa, 1, U, 0, EOF, wait=False)
    await b.svc.setlk(fb, 1, W, 0, 10, wait=False)
    assert b.hub_spans(hub) == [(INO, 1, False, 0, 10, 2), (INO, 1, False, 10, 20, 1)]


async def test_a_refused_request_records_nothing(mounts, hub) -> None:
    """The original recorded a lock for a session even when it was refused."""
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    with pytest.raises(LockConflict):
        await b.svc.setlk(fb, 2, R, 0, 1, wait=False)
    assert b.hub_spans(hub) == [] and b.svc.held_locks() == []


async def test_within_one_mount_owners_conflict_as_on_a_local_disk(mounts, hub) -> None:
    a = mounts("a")
    fh = a.open()
    await a.svc.setlk(fh, 1, W, 100, 110, wait=False, pid=4242)
    with pytest.raises(LockConflict) as exc:
        await a.svc.setlk(fh, 2, R, 105, 106, wait=False)
    assert exc.value.holder == Holder(W, 100, 110, 4242)  # a local holder shows its pid
    assert await a.svc.getlk(fh, 2, R, 0, EOF) == Holder(W, 100, 110, 4242)
    assert await a.svc.getlk(fh, 1, W, 0, EOF) is None  # never conflicts with itself
    await a.svc.setlk(fh, 2, W, 0, 50, wait=False)


async def test_split_merge_and_conversion_reach_the_server(mounts, hub) -> None:
    a = mounts("a")
    fh = a.open()
    await a.svc.setlk(fh, 1, W, 0, 100, wait=False)
    await a.svc.setlk(fh, 1, U, 40, 60, wait=False)
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 40, 2), (INO, 1, False, 60, 100, 2)]
    await a.svc.setlk(fh, 1, R, 0, 100, wait=False)  # downgrade the rest, take the hole
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 100, 1)]
    await a.svc.setlk(fh, 1, W, 50, EOF, wait=False)
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 50, 1), (INO, 1, False, 50, EOF, 2)]
    assert a.svc.held_locks() == [
        LockSpan(INO, 1, False, 0, 50, 1),
        LockSpan(INO, 1, False, 50, EOF, 2),
    ]


# --- waiting --------------------------------------------------------------------------------------
async def test_a_blocking_request_waits_until_the_other_mount_unlocks(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(fb, 1, W, 0, 1, wait=True))
    await settle()
    assert not waiter.done()
    await a.svc.setlk(fa, 1, U, 0, EOF, wait=False)
    await asyncio.wait_for(waiter, 5)
    assert b.hub_spans(hub) == [(INO, 1, False, 0, 1, 2)]


async def test_an_interrupted_wait_leaves_nothing_behind(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(fb, 1, W, 0, 1, wait=True))
    await settle()
    waiter.cancel()  # FUSE_INTERRUPT
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await settle()
    await a.svc.setlk(fa, 1, U, 0, EOF, wait=False)
    await settle()
    assert b.hub_spans(hub) == [] and hub.locks.table.waiters((INO, False)) == []


async def test_a_grant_that_raced_the_interrupt_is_undone(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(fb, 1, W, 0, 1, wait=True))
    await settle()
    # the unlock reaches the server (granting b) in the same instant b's caller is signalled
    hub.locks.handle(a.coord.session, Unlock(INO, 1, 0, EOF))
    a.svc.mirror.set((INO, False), 1, U, 0, EOF)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await settle()
    assert b.hub_spans(hub) == [], "the grant the caller never saw must be undone"
    # and b's next request (the caller retrying) is served after the undo
    await b.svc.setlk(fb, 1, W, 0, 1, wait=True)
    assert b.hub_spans(hub) == [(INO, 1, False, 0, 1, 2)]


async def test_an_interrupted_upgrade_keeps_the_read_lock(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, R, 0, 10, wait=False)
    await b.svc.setlk(fb, 1, R, 0, 10, wait=False)
    upgrade = asyncio.create_task(a.svc.setlk(fa, 1, W, 0, 10, wait=True))
    await settle()
    hub.locks.handle(b.coord.session, Unlock(INO, 1, 0, EOF))  # grants a's upgrade ...
    b.svc.mirror.set((INO, False), 1, U, 0, EOF)
    upgrade.cancel()  # ... as its caller is interrupted
    with pytest.raises(asyncio.CancelledError):
        await upgrade
    await settle()
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 10, 1)], "back to the read lock it held"


async def test_a_read_request_over_a_partly_held_write_lock_never_loses_it(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, 10, wait=False)
    await b.svc.setlk(fb, 1, W, 10, 20, wait=False)
    req = asyncio.create_task(a.svc.setlk(fa, 1, R, 0, 20, wait=True))
    await settle()
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 10, 2)], "nothing downgraded while waiting"
    req.cancel()
    with pytest.raises(asyncio.CancelledError):
        await req
    await settle()
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 10, 2)]
    req = asyncio.create_task(a.svc.setlk(fa, 1, R, 0, 20, wait=True))
    await settle()
    await b.svc.setlk(fb, 1, U, 0, EOF, wait=False)
    await asyncio.wait_for(req, 5)
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 20, 1)]


async def test_deadlock_between_two_mounts_is_refused(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, 1, wait=False)
    await b.svc.setlk(fb, 1, W, 1, 2, wait=False)
    a_waits = asyncio.create_task(a.svc.setlk(fa, 1, W, 1, 2, wait=True))
    await settle()
    with pytest.raises(LockDeadlock) as exc:
        await b.svc.setlk(fb, 1, W, 0, 1, wait=True)
    assert exc.value.errno == errno.EDEADLK
    await b.svc.setlk(fb, 1, U, 0, EOF, wait=False)
    await asyncio.wait_for(a_waits, 5)


# --- flock ----------------------------------------------------------------------------------------
async def test_flock_shared_exclusive_and_conversion_like_linux(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.flock(fa, 10, R, wait=False)
    await b.svc.flock(fb, 20, R, wait=False)
    with pytest.raises(LockConflict) as exc:
        await a.svc.flock(fa, 10, W, wait=False)
    assert exc.value.errno == errno.EWOULDBLOCK
    assert a.hub_spans(hub) == [], "Linux drops the old lock first, even when conversion fails"
    await a.svc.flock(fa, 10, R, wait=False)
    # flock and POSIX locks are independent
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    await b.svc.flock(fb, 20, U, wait=False)
    await a.svc.flock(fa, 10, W, wait=False)
    assert a.hub_spans(hub) == [(INO, 1, False, 0, EOF, 2), (INO, 10, True, 0, EOF, 2)]


# --- close ----------------------------------------------------------------------------------------
async def test_close_drops_the_owners_locks_and_release_drops_ofd_locks(mounts, hub) -> None:
    a = mounts("a")
    f1, f2 = a.open(), a.open()
    other = a.open(INO + 4)
    await a.svc.setlk(f1, 1, W, 0, 10, wait=False)
    await a.svc.setlk(f2, 1, W, 20, 30, wait=False)  # the same process through another fd
    await a.svc.setlk(other, 1, W, 0, 10, wait=False)
    await a.svc.release_owner(f2, 1, False)  # close(f2): every lock of owner 1 on INO goes
    assert a.hub_spans(hub) == [(INO + 4, 1, False, 0, 10, 2)]
    ofd = a.open()
    await a.svc.setlk(ofd, 0xFD, R, 0, 5, wait=False)  # an OFD lock: owner = the description
    await a.svc.flock(ofd, 0xFE, W, wait=False)
    await a.svc.release_handle(ofd)
    assert a.hub_spans(hub) == [(INO + 4, 1, False, 0, 10, 2)]
    await a.svc.release_owner(f1, 99, False)  # an owner without locks: nothing to do
    await a.svc.close()
    assert a.hub_spans(hub) == []


# --- coherence ------------------------------------------------------------------------------------
class FakeReplica(ReplicaSync):
    def __init__(self) -> None:
        self.position = 0
        self.applied = 0
        self.calls: list[tuple[str, int]] = []
        self.moved = asyncio.Event()

    async def flush_confirmed(self) -> int:
        self.position += 100
        self.calls.append(("flush", self.position))
        return self.position

    async def wait_applied(self, position: int) -> None:
        self.calls.append(("wait", position))
        while self.applied < position:
            self.moved.clear()
            await self.moved.wait()

    def apply(self, position: int) -> None:
        self.applied = position
        self.moved.set()


async def test_a_release_carries_the_writers_position_and_the_grant_waits_for_it(mounts) -> None:
    ra, rb = FakeReplica(), FakeReplica()
    a, b = mounts("a", ra), mounts("b", rb)
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    await a.svc.setlk(fa, 1, U, 0, EOF, wait=False)
    assert ra.calls == [("flush", 100)], "a write lock is released only after a flush"
    taking = asyncio.create_task(b.svc.setlk(fb, 1, R, 0, EOF, wait=False))
    await settle()
    assert rb.calls == [("wait", 100)]
    assert not taking.done(), "the grant waits until b's replica applied a's writes"
    rb.apply(100)
    await asyncio.wait_for(taking, 5)
    await b.svc.setlk(fb, 1, U, 0, EOF, wait=False)
    assert rb.calls == [("wait", 100)], "releasing a read lock flushes nothing"


async def test_a_downgrade_flushes_and_an_interrupted_catch_up_undoes_the_grant(
    mounts, hub
) -> None:
    ra, rb = FakeReplica(), FakeReplica()
    a, b = mounts("a", ra), mounts("b", rb)
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    await a.svc.setlk(fa, 1, R, 0, EOF, wait=False)  # SQLite: EXCLUSIVE -> SHARED
    assert ra.calls == [("flush", 100)]
    taking = asyncio.create_task(b.svc.setlk(fb, 1, R, 0, 10, wait=False))
    await settle()
    taking.cancel()  # interrupted while its replica catches up
    with pytest.raises(asyncio.CancelledError):
        await taking
    await settle()
    assert b.hub_spans(hub) == []


# --- leases, reconnects, restarts -----------------------------------------------------------------
async def test_a_dead_mounts_locks_go_after_the_lease_and_only_its_own(mounts, hub) -> None:
    clock = hub.clock
    assert isinstance(clock, FakeClock)
    a, b, c = mounts("a"), mounts("b"), mounts("c")
    fa, fb, fc = a.open(), b.open(), c.open(INO + 2)
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    await c.svc.setlk(fc, 1, W, 0, EOF, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(fb, 1, W, 0, EOF, wait=True))
    await settle()
    a.coord.disconnect()  # a's mount died: no unlock will ever come
    clock.advance(5)
    hub.tick()
    b.coord.hub.locks.handle(b.coord.session, Unlock(0, 0))  # b is alive: renews its lease
    c.coord.hub.locks.handle(c.coord.session, Unlock(0, 0))
    await settle()
    assert not waiter.done(), "within the lease a's lock holds"
    clock.advance(6)
    hub.tick()
    await asyncio.wait_for(waiter, 5)
    assert c.hub_spans(hub) == [(INO + 2, 1, False, 0, EOF, 2)], "c's lock is not a's to free"


async def test_a_reconnect_within_the_lease_keeps_every_lock(mounts, hub) -> None:
    a, b = mounts("a"), mounts("b")
    fa, fb = a.open(), b.open()
    await a.svc.setlk(fa, 1, W, 0, 10, wait=False)
    await a.svc.flock(fa, 5, R, wait=False)
    a.coord.disconnect()
    assert a.coord.reconnect() == []
    with pytest.raises(LockConflict):
        await b.svc.setlk(fb, 1, R, 0, 1, wait=False)
    assert a.hub_spans(hub) == [(INO, 1, False, 0, 10, 2), (INO, 5, True, 0, EOF, 1)]


async def test_after_a_restart_only_reclaims_are_granted_during_grace() -> None:
    clock = FakeClock()
    config = LockConfig(lease=10.0)
    before = MemoryLockHub(clock, config)
    a = Mount(before, "a")
    fa = a.open()
    await a.svc.setlk(fa, 1, W, 0, EOF, wait=False)
    # the server restarts: its lock state is gone; a grace period from now (shorter than the
    # lease here, so that nobody's lease runs out in this test)
    after = MemoryLockHub(clock, config, grace_until=clock.monotonic() + 5)
    b = Mount(after, "b")
    fb = b.open()
    asked = asyncio.create_task(b.svc.setlk(fb, 1, W, 0, 1, wait=False))
    await settle()
    assert not asked.done(), "a new request waits for the end of grace"
    a.coord.hub = after  # a reconnects to the restarted server and reclaims
    assert a.coord.reconnect(reclaim=True) == []
    clock.advance(4)
    after.tick()
    assert not asked.done()
    clock.advance(2)
    after.tick()
    with pytest.raises(LockConflict):
        await asyncio.wait_for(asked, 5)
    assert a.hub_spans(after) == [(INO, 1, False, 0, EOF, 2)]


async def test_a_reclaim_without_a_valid_lease_is_lost() -> None:
    clock = FakeClock()
    after = MemoryLockHub(clock, LockConfig(lease=10.0), grace_until=clock.monotonic() + 10)
    a = Mount(after, "a")
    fa = a.open()
    a.svc.mirror.set((INO, False), 1, W, 0, EOF)  # held before the restart
    a.svc._fhs[(INO, False, 1)] = {fa}
    lost = a.coord.reconnect(reclaim=False)  # its lease ran out meanwhile
    assert lost == [LockSpan(INO, 1, False, 0, EOF, 2)]
    assert a.svc.held_locks() == [] and a.hub_spans(after) == []


async def test_a_reclaim_that_conflicts_is_lost() -> None:
    clock = FakeClock()
    after = MemoryLockHub(clock, LockConfig(lease=10.0), grace_until=clock.monotonic() + 10)
    a, b = Mount(after, "a"), Mount(after, "b")
    for m in (a, b):
        m.svc.mirror.set((INO, False), 1, W, 0, EOF)
    assert a.coord.reconnect() == []
    assert b.coord.reconnect() == [LockSpan(INO, 1, False, 0, EOF, 2)]
