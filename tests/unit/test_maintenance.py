"""The policy a mount runs beside serving requests (application/maintenance.py), driven directly
on the in-memory twins with a fake clock, without the kernel:

* compaction starts when it is due and worth it, not when the log only grew with new data or
  is not due; a busy file system delays a due compaction by at most the overdue time, a quiet
  one gets it at the next check; the loop compacts and the log shrinks;
* the idle commit writes out what waited, says a full disk once and room again once;
* the check of the log before a checkpoint reports damage and passes a sound log;
* the NTP re-synchronisation keeps going after a failure, at its period;
* a replica's first sync: caught up, gave up after the timeout (mounted disconnected), stopped
  (``NotSynced``); the upload before unmount waits at most its timeout, and a disconnected
  replica says how much is left to upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from adapters.memory import FakeClock, MemoryRedoLogFactory
from application import maintenance
from application.maintenance import (
    CommitTicker,
    CompactionSchedule,
    NotSynced,
    first_sync,
    keep_clock_synced,
    scrub_prefix,
    upload_before_unmount,
)
from application.mount import Mounted, MountRequest, MountService
from application.ports import RemoteChain, RemoteConnector, RemoteError
from application.replica_log import ReplicaLog
from application.replication import RecoveryMode, ReplicationService
from application.session import Formats
from domain.compaction import CompactMode, CompactPolicy
from domain.fs.model import ROOT_INO
from domain.wire import CommitRecord, Confirmed, EndOfHistory, ServerMessage
from tests.fakes import FAST_KDF, FastCrypto, frames

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
CHAIN = "local"


@dataclass
class Setup:
    logs: MemoryRedoLogFactory
    clock: FakeClock
    mounted: Mounted

    def write(self, name: bytes, data: bytes) -> None:
        fs = self.mounted.fs
        try:
            fh = fs.open(fs.lookup(ROOT_INO, name).ino)
        except Exception:
            fh, _ = fs.create(ROOT_INO, name, 0o100644, 0, 0)
        try:
            fs.write(fh, 0, data)
            fs.fsync(fh)
        finally:
            fs.release(fh)


def _open(*, compaction: CompactPolicy | None = None, remote: bool = False) -> Iterator[Setup]:
    logs, clock = MemoryRedoLogFactory(), FakeClock()
    request = MountRequest(
        CHAIN, b"pw", Formats(), 0, 0, kdf=FAST_KDF, remote=remote,
        compaction=compaction or CompactPolicy(),
    )  # fmt: skip
    mounted = MountService(logs, FastCrypto(), clock).open(request)
    try:
        yield Setup(logs, clock, mounted)
    finally:
        with contextlib.suppress(Exception):
            mounted.close()


@pytest.fixture
def mount() -> Iterator[Setup]:
    """A local mount whose compaction is due once the log grew by 1 MiB."""
    yield from _open(compaction=CompactPolicy(mode=CompactMode.SIZE, size=MiB))


@pytest.fixture
def replica() -> Iterator[Setup]:
    yield from _open(remote=True)


class Requests:
    """The file system's request counter, moved by the test."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def schedule_of(m: Setup, requests: Requests, overdue: float = 30.0) -> CompactionSchedule:
    assert m.mounted.compactor is not None
    return CompactionSchedule(m.mounted.compactor, m.mounted.fs, m.clock, requests, overdue=overdue)


def rewrite(m: Setup, times: int = 12) -> None:
    """Garbage for a compaction: one 256 KiB file written ``times`` times."""
    for i in range(times):
        m.write(b"churn", bytes([i]) * (256 << 10))


# --- compaction -------------------------------------------------------------------------------
def test_nothing_is_compacted_while_it_is_not_due(mount: Setup) -> None:
    mount.write(b"small", b"x" * 1000)
    schedule = schedule_of(mount, Requests())
    assert [schedule.check() for _ in range(5)] == [False] * 5


def test_a_due_compaction_that_would_reclaim_little_is_not_started(mount: Setup) -> None:
    for i in range(12):  # 3 MiB of new data in new files: due by size, nothing to reclaim
        mount.write(b"f%d" % i, bytes([i]) * (256 << 10))
    assert mount.mounted.compactor is not None and mount.mounted.compactor.due()
    schedule = schedule_of(mount, Requests())
    assert schedule.check() is False


def test_a_due_worthwhile_compaction_starts_at_once_when_quiet(mount: Setup) -> None:
    rewrite(mount)
    schedule = schedule_of(mount, Requests())
    assert schedule.check() is True


def test_a_busy_file_system_delays_it_at_most_the_overdue_time(mount: Setup) -> None:
    rewrite(mount)
    requests = Requests()
    schedule = schedule_of(mount, requests, overdue=30.0)
    results = []
    for _ in range(32):  # one check a second, a request between every two
        mount.clock.advance(1.0)
        requests.n += 1
        results.append(schedule.check())
    # due since the first check: started at the check 30 s later, not before
    assert results[:30] == [False] * 30
    assert results[30] is True
    assert results[31] is False, "the wait starts anew after a start"


def test_requests_served_during_a_compaction_do_not_make_the_next_check_busy(
    mount: Setup,
) -> None:
    rewrite(mount)  # (the compaction itself is not run here: it stays due)
    requests = Requests()
    schedule = schedule_of(mount, requests)
    assert schedule.check() is True
    requests.n += 50  # served while it ran
    schedule.compacted()
    mount.clock.advance(1.0)
    assert schedule.check() is True


def test_a_busy_spell_that_ends_lets_it_start_at_the_next_quiet_check(mount: Setup) -> None:
    rewrite(mount)
    requests = Requests()
    schedule = schedule_of(mount, requests)
    for _ in range(5):
        mount.clock.advance(1.0)
        requests.n += 3
        assert schedule.check() is False
    mount.clock.advance(1.0)
    assert schedule.check() is True


def test_the_loop_compacts_in_the_background_and_the_log_shrinks(mount: Setup) -> None:
    rewrite(mount)
    compactor = mount.mounted.compactor
    assert compactor is not None
    before = mount.mounted.session.log.size()
    asked: list[float] = []
    back = asyncio.Event()  # the loop came back to sleep after the compaction ended

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        if compactor.last is not None:
            back.set()
        mount.clock.advance(seconds)
        await asyncio.sleep(0.001)

    async def scenario() -> None:
        task = asyncio.create_task(schedule_of(mount, Requests()).run(sleep=sleep))
        try:
            await asyncio.wait_for(back.wait(), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    after = mount.mounted.session.log.size()
    assert after < before / 4, (before, after)
    assert set(asked) == {maintenance.COMPACT_CHECK_SECONDS}
    assert mount.logs.read_checkpoint(CHAIN), "no checkpoint was written after the compaction"


# --- the idle commit ----------------------------------------------------------------------------
def test_the_ticker_writes_out_what_waited_and_says_a_full_disk_once(
    mount: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    fs = mount.mounted.fs
    fh, _ = fs.create(ROOT_INO, b"buffered", 0o100644, 0, 0)
    fs.write(fh, 0, b"b" * 100_000)  # buffered, not in the log yet
    ticker = CommitTicker(fs, idle_seconds=1.0)
    mount.logs.space.free = fs.SPACE_RESERVE  # the disk is full
    end = mount.mounted.session.log.size()
    mount.clock.advance(2.0)
    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.fuse"):
        for _ in range(3):
            ticker.tick()
        full = [r for r in caplog.records if "the disk under the log is full" in r.message]
        assert len(full) == 1, caplog.text
        assert ticker.disk_full
        mount.logs.space.free = None  # room again
        ticker.tick()
        ticker.tick()
    room = [r for r in caplog.records if "has room again" in r.message]
    assert len(room) == 1, caplog.text
    assert not ticker.disk_full
    assert mount.mounted.session.log.size() > end + 100_000, "the buffered data was not written"
    assert fs.read(fh, 0, 200_000) == b"b" * 100_000
    fs.release(fh)


def test_the_ticker_waits_for_the_idle_time(mount: Setup) -> None:
    fs = mount.mounted.fs
    fh, _ = fs.create(ROOT_INO, b"f", 0o100644, 0, 0)
    fs.write(fh, 0, b"w" * 10_000)
    end = mount.mounted.session.log.size()
    ticker = CommitTicker(fs, idle_seconds=1.0)
    mount.clock.advance(0.5)
    ticker.tick()
    assert mount.mounted.session.log.size() == end, "written out before it waited a second"
    mount.clock.advance(0.6)
    ticker.tick()
    assert mount.mounted.session.log.size() > end
    fs.release(fh)


# --- the check of the log before a checkpoint ----------------------------------------------------
def test_a_damaged_prefix_is_reported(mount: Setup, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(20):
        mount.write(b"f%d" % i, b"d" * 5000)
    session = mount.mounted.session
    until = session.log.committed_end
    raw = mount.logs.disk(CHAIN)
    middle = frames(raw)[len(frames(raw)) // 2]
    raw[middle.meta_offset + 3] ^= 0x08  # the metadata of a record in the middle
    with caplog.at_level(logging.ERROR, logger="wasmer_dfs.fuse"):
        damage = asyncio.run(scrub_prefix(mount.mounted.fs, until))
    assert damage is not None
    assert "verify --repair" in damage, damage
    assert damage in caplog.text
    mount.mounted.save_checkpoint = False


def test_a_sound_prefix_passes(mount: Setup) -> None:
    for i in range(20):
        mount.write(b"f%d" % i, b"d" * 5000)
    until = mount.mounted.session.log.committed_end
    assert asyncio.run(scrub_prefix(mount.mounted.fs, until)) is None


def test_damage_after_the_checked_prefix_is_not_its_business(mount: Setup) -> None:
    mount.write(b"a", b"a" * 5000)
    until = mount.mounted.session.log.committed_end
    mount.write(b"b", b"b" * 5000)
    raw = mount.logs.disk(CHAIN)
    last = next(f for f in frames(raw) if f.position >= until)
    raw[last.meta_offset + 3] ^= 0x08
    assert asyncio.run(scrub_prefix(mount.mounted.fs, until)) is None
    raw[last.meta_offset + 3] ^= 0x08


# --- the clock ---------------------------------------------------------------------------------
class SyncFailed(Exception):
    pass


def test_clock_resync_goes_on_after_failures_at_its_period() -> None:
    calls: list[int] = []
    asked: list[float] = []

    def sync() -> None:
        calls.append(1)
        if len(calls) in (1, 2):
            raise SyncFailed("no server answered")

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) > 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(keep_clock_synced(sync, SyncFailed, every=20.0, sleep=sleep))
    assert len(calls) == 4, "a failed re-synchronisation ended the loop"
    assert asked == [20.0] * 5


def test_clock_resync_does_not_swallow_other_errors() -> None:
    def sync() -> None:
        raise ZeroDivisionError

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(keep_clock_synced(sync, SyncFailed, sleep=sleep))


# --- a replica's first sync and last upload ------------------------------------------------------
class SilentChain(RemoteChain):
    """A chain server that answers the hello, then sends only what the test queues, and never
    confirms a commit."""

    def __init__(self, header: bytes | None, stream: asyncio.Queue[ServerMessage | None]) -> None:
        self._header = header
        self.stream = stream
        self.commits = 0

    @property
    def header(self) -> bytes | None:
        return self._header

    async def subscribe(self, from_position: int) -> None:
        pass

    async def next(self) -> ServerMessage:
        msg = await self.stream.get()
        if msg is None:
            raise RemoteError("connection closed")
        return msg

    async def commit(self, records: Sequence[CommitRecord]) -> Confirmed:
        self.commits += 1
        await asyncio.Event().wait()  # never confirmed
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.stream.put_nowait(None)


class SilentServer(RemoteConnector):
    def __init__(self, *, reachable: bool = True, caught_up: bool = False) -> None:
        self.reachable = reachable
        self.caught_up = caught_up
        self.chains: list[SilentChain] = []

    async def connect(self, header: bytes | None) -> RemoteChain:
        if not self.reachable:
            raise RemoteError("the chain server is not reachable")
        stream: asyncio.Queue[ServerMessage | None] = asyncio.Queue()
        if self.caught_up:
            stream.put_nowait(EndOfHistory(position=0))
        chain = SilentChain(header, stream)
        self.chains.append(chain)
        return chain


async def replicating(
    r: Setup, server: SilentServer
) -> tuple[ReplicationService, asyncio.Task[None]]:
    session = r.mounted.session
    service = ReplicationService(
        session, ReplicaLog(session), r.mounted.fs, server, RecoveryMode.ASYNC
    )
    return service, asyncio.create_task(service.run())


async def stopped(service: ReplicationService, task: asyncio.Task[None]) -> None:
    await service.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_first_sync_returns_once_caught_up(
    replica: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        service, task = await replicating(replica, SilentServer(caught_up=True))
        try:
            await asyncio.wait_for(first_sync(service, None, asyncio.Event()), 10)
            assert service.has_synced
        finally:
            await stopped(service, task)

    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.fuse"):
        asyncio.run(scenario())
    assert "mounted disconnected" not in caplog.text


def test_first_sync_gives_up_after_its_timeout_and_mounts_disconnected(
    replica: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> float:
        service, task = await replicating(replica, SilentServer(reachable=False))
        try:
            start = time.monotonic()
            await first_sync(service, 0.3, asyncio.Event())
            assert not service.has_synced
            return time.monotonic() - start
        finally:
            await stopped(service, task)

    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.fuse"):
        took = asyncio.run(scenario())
    assert 0.25 <= took < 3, took
    assert "did not answer within 0 s: mounted disconnected" in caplog.text


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_first_sync_stopped_is_not_synced(replica: Setup, timeout: float | None) -> None:
    async def scenario() -> None:
        service, task = await replicating(replica, SilentServer(reachable=False))
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        try:
            with pytest.raises(NotSynced, match="not reachable"):
                await asyncio.wait_for(first_sync(service, timeout, stop), 10)
        finally:
            await stopped(service, task)

    asyncio.run(scenario())


def test_the_upload_before_unmount_waits_at_most_its_timeout(
    replica: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    server = SilentServer(caught_up=True)

    async def scenario() -> float:
        service, task = await replicating(replica, server)
        try:
            await asyncio.wait_for(service.wait_synced(), 10)
            replica.write(b"new", b"n" * 1000)
            assert service.state.connected and service.replica.pending
            start = time.monotonic()
            await upload_before_unmount(service, 0.5)
            return time.monotonic() - start
        finally:
            await stopped(service, task)

    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.fuse"):
        took = asyncio.run(scenario())
    assert 0.45 <= took < 3, took
    assert sum(c.commits for c in server.chains) >= 1, "nothing was offered to the server"
    assert "not everything reached the chain server before unmount" in caplog.text


def test_a_disconnected_replica_says_what_goes_up_at_the_next_mount(
    replica: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> float:
        service, task = await replicating(replica, SilentServer(reachable=False))
        try:
            replica.write(b"new", b"n" * 1000)
            replica.mounted.session.commit()
            start = time.monotonic()
            await upload_before_unmount(service, 5.0)
            return time.monotonic() - start
        finally:
            await stopped(service, task)

    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.fuse"):
        took = asyncio.run(scenario())
    assert took < 1, "a disconnected replica waited for the server"
    assert "transactions not yet on the chain server (they go up at the next mount)" in caplog.text
