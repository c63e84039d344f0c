"""Locks on a mount: flock(2) and POSIX fcntl(2) locks that hold across every mount of a chain
(docs/adr/0010-lock-protocol.md).

``LockService`` is what the FUSE lock handlers (``adapters/fuse_locks.py``) call. It keeps a
*mirror* (``domain.locks.LockTable``) of the locks the coordinator granted to this mount's owners
and asks a ``LockCoordinator`` (port) for every change:

* ``WsLockCoordinator`` (adapters/ws_locks.py): the chain server, which decides between mounts;
* ``MemoryLockHub.coordinator()`` (adapters/memory/locks.py, the twin): in process, the same
  lock logic as the server's (``application.lock_server.ChainLocks``); tests use one hub with
  several coordinators as several mounts.

The ports (``LockCoordinator``, ``PendingLock``, ``HeldLocks``, ``ReplicaSync``) and the requests
and errors they speak in live in ``application/ports/locks.py`` (docs/adr/0017).

The mirror answers at once what needs no round trip: a non-blocking request that conflicts
with another owner of this mount, F_GETLK against a local holder (with its pid), an unlock of
nothing, a request for what the owner holds already. It is always a subset of what the
coordinator holds for this mount (it takes a grant only once granted, and drops a lock before
telling the coordinator), so its answers never contradict the coordinator's.

**Requests are all or nothing** and leave nothing behind when they fail or are interrupted: a
lock that the coordinator granted while the caller was being interrupted (a signal, FUSE_INTERRUPT)
is undone. Undoing only ever releases or downgrades, so it cannot fail or wait: a READ request
over a range the owner partly holds for writing first acquires the parts it does not hold (which
may wait) and only then downgrades the rest.

**Coherence** (``ReplicaSync``, implemented by the replication layer): before a write lock is
released or downgraded, ``flush_confirmed`` makes every write of this mount confirmed by the
server and the release carries that log position; a grant carries the position the previous
holders' releases reached, and ``wait_applied`` holds the grant back from the kernel until this
mount's replica has applied the log that far. So the next holder reads what the previous
holder wrote (what SQLite relies on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from application.ports import (
    Acquire,
    HeldLocks,
    Holder,
    LockConflict,
    LockCoordinator,
    LockDeadlock,
    LockRefused,
    LockUnavailable,
    PendingLock,
    ReplicaSync,
)
from domain.locks import EOF, Kind, LockTable, gaps
from domain.wire import (
    LockResult,
    LockSpan,
    LockStatus,
)

log = logging.getLogger("wasmer_dfs.locks")


def outcome(msg: LockResult) -> int:
    """The grant position of an answer to ``Lock``; raises what a refusal means."""
    if msg.status is LockStatus.GRANTED:
        return msg.position
    holder = span_holder(msg.holder) if msg.holder is not None else None
    if msg.status is LockStatus.CONFLICT:
        raise LockConflict(holder)
    if msg.status is LockStatus.DEADLOCK:
        raise LockDeadlock("waiting would deadlock")
    if msg.status is LockStatus.CANCELLED:
        raise LockUnavailable("the request was withdrawn")
    raise LockUnavailable(msg.reason or "the lock server refused the request")


def span_holder(span: LockSpan) -> Holder:
    """The ``Holder`` of a conflicting lock another mount holds (pid 0)."""
    return Holder(Kind(span.kind), span.start, span.end, 0)


# --- the service ----------------------------------------------------------------------------------
MirrorKey = tuple[int, bool]  # (inode = object key, flock?)
OwnerKey = tuple[int, bool, int]  # (inode, flock?, owner)


class LockService(HeldLocks):
    """The mount's locks. ``inode_of(fh)`` maps an open file handle to its inode (the object
    key, the same on every mount)."""

    def __init__(
        self,
        coordinator: LockCoordinator,
        inode_of: Callable[[int], int],
        replica: ReplicaSync | None = None,
        *,
        max_waiting: int = 1024,
    ) -> None:
        self.coordinator = coordinator
        self.inode_of = inode_of
        self.replica = replica
        self.max_waiting = max_waiting
        self.mirror: LockTable[MirrorKey, int] = LockTable()
        self._fhs: dict[OwnerKey, set[int]] = {}
        self._settling: dict[OwnerKey, asyncio.Future[None]] = {}
        self._serial: dict[OwnerKey, tuple[asyncio.Lock, int]] = {}
        self._waiting = 0
        self._background: set[asyncio.Future[None]] = set()
        coordinator.bind(self)

    # -- what the FUSE handlers call -------------------------------------------------------------
    async def getlk(self, fh: int, owner: int, kind: Kind, start: int, end: int) -> Holder | None:
        """F_GETLK: a lock (of another owner, on any mount) that conflicts, or None."""
        ino = self.inode_of(fh)
        blocker = self.mirror.conflict((ino, False), owner, kind, start, end)
        if blocker is not None:
            return Holder(blocker.kind, blocker.start, blocker.end, blocker.pid)
        return await self.coordinator.test(ino, owner, False, kind, start, end)

    async def setlk(
        self, fh: int, owner: int, kind: Kind, start: int, end: int, *, wait: bool, pid: int = 0
    ) -> None:
        """F_SETLK / F_SETLKW (``wait``); ``kind`` UNLOCK releases the range."""
        ino = self.inode_of(fh)
        if kind is Kind.UNLOCK:
            await self._shielded(self._release(ino, False, owner, start, end))
            return
        await self._acquire(fh, ino, False, owner, kind, start, end, wait, pid)

    async def flock(self, fh: int, owner: int, kind: Kind, *, wait: bool, pid: int = 0) -> None:
        """flock(2): LOCK_SH (READ), LOCK_EX (WRITE), LOCK_UN (UNLOCK). Like Linux, a conversion
        drops the old lock first (and keeps none when the new one is refused)."""
        ino = self.inode_of(fh)
        if kind is Kind.UNLOCK:
            await self._shielded(self._release(ino, True, owner, 0, EOF))
            return
        held = self.mirror.owned((ino, True), owner)
        if held and held[0].kind is kind:
            return
        if held and await self._shielded(self._release(ino, True, owner, 0, EOF)):
            raise asyncio.CancelledError  # interrupted: the old lock is gone (as on Linux)
        await self._acquire(fh, ino, True, owner, kind, 0, EOF, wait, pid)

    async def release_owner(self, fh: int, owner: int, flock: bool) -> None:
        """close(): drop every lock of ``owner`` on the file of ``fh`` (POSIX: of the closing
        process, whichever descriptor took them; flock: of the open file description)."""
        ino = self.inode_of(fh)
        if not self.mirror.owned((ino, flock), owner) and (ino, flock, owner) not in self._settling:
            self._fhs.pop((ino, flock, owner), None)
            return
        await self._shielded(self._release(ino, flock, owner, 0, EOF))

    async def release_handle(self, fh: int) -> None:
        """release(fh), the last close of an open file description: drop the locks still
        recorded as taken through it (OFD locks: the kernel sends nothing else for them)."""
        for okey in [k for k, fhs in self._fhs.items() if fh in fhs]:
            fhs = self._fhs.get(okey)
            if fhs is not None:
                fhs.discard(fh)
            ino, flock, owner = okey
            if self.mirror.owned((ino, flock), owner):
                await self._shielded(self._release(ino, flock, owner, 0, EOF))
            self._fhs.pop(okey, None)

    async def close(self) -> None:
        """Unmount: wait for undo work, then release everything through the coordinator."""
        pending = list(self._settling.values()) + list(self._background)
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        await self.coordinator.close()

    # -- HeldLocks (the coordinator after a reconnect) -------------------------------------------
    def held_locks(self) -> list[LockSpan]:
        return [
            LockSpan(ino, h.owner, flock, h.start, h.end, int(h.kind))
            for (ino, flock), h in self.mirror
        ]

    def locks_lost(self, lost: list[LockSpan]) -> None:
        for span in lost:
            log.error(
                "lost a %s lock of owner %x on inode %d [%d, %s) (its lease ran out, or another"
                " mount took it while the chain server was unreachable)",
                "flock" if span.flock else "POSIX",
                span.owner,
                span.key,
                span.start,
                "EOF" if span.end == EOF else span.end,
            )
            self.mirror.set((span.key, span.flock), span.owner, Kind.UNLOCK, span.start, span.end)

    # -- acquiring -------------------------------------------------------------------------------
    async def _acquire(
        self,
        fh: int,
        ino: int,
        flock: bool,
        owner: int,
        kind: Kind,
        start: int,
        end: int,
        wait: bool,
        pid: int,
    ) -> None:
        okey: OwnerKey = (ino, flock, owner)
        # one request of an owner on a file at a time (threads of one process); releases do
        # not queue behind them
        serial, users = self._serial.get(okey, (asyncio.Lock(), 0))
        self._serial[okey] = (serial, users + 1)
        try:
            async with serial:
                await self._settled(okey)
                await self._acquire_locked(fh, okey, kind, start, end, wait, pid)
        finally:
            serial, users = self._serial[okey]
            if users > 1:
                self._serial[okey] = (serial, users - 1)
            else:
                del self._serial[okey]

    async def _acquire_locked(
        self, fh: int, okey: OwnerKey, kind: Kind, start: int, end: int, wait: bool, pid: int
    ) -> None:
        ino, flock, owner = okey
        mkey: MirrorKey = (ino, flock)
        blocker = self.mirror.conflict(mkey, owner, kind, start, end)
        if blocker is not None and not wait:
            raise LockConflict(Holder(blocker.kind, blocker.start, blocker.end, blocker.pid))
        current = self.mirror.within(mkey, owner, start, end)
        if kind is Kind.WRITE:
            need = gaps(start, end, [(h.start, h.end) for h in current if h.kind is kind])
            downgrade: list[tuple[int, int]] = []
        else:
            need = gaps(start, end, [(h.start, h.end) for h in current])
            downgrade = [(h.start, h.end) for h in current if h.kind is Kind.WRITE]
        if wait and need:
            if self._waiting >= self.max_waiting:
                raise LockUnavailable("too many waiting lock requests")
            self._waiting += 1
        try:
            await self._acquire_parts(okey, kind, need, wait)
        finally:
            if wait and need:
                self._waiting -= 1
        if downgrade:
            # Past the point of no return: the rest only downgrades, it never waits; finish
            # it even when interrupted (the caller then gets its lock, not EINTR).
            await self._shielded(self._downgrade(ino, flock, owner, downgrade))
        self.mirror.set(mkey, owner, kind, start, end, pid)
        self._fhs.setdefault(okey, set()).add(fh)

    async def _acquire_parts(
        self, okey: OwnerKey, kind: Kind, need: list[tuple[int, int]], wait: bool
    ) -> None:
        """Acquire every part of ``need`` (none held by the owner as ``kind``), then wait until
        the replica applied what the grants ask; on failure or cancellation, undo."""
        ino, flock, owner = okey
        granted: list[tuple[int, int]] = []
        positions = [0]
        pending: PendingLock | None = None
        part = (0, 0)
        try:
            for part in need:
                pending = self.coordinator.acquire(
                    Acquire(ino, owner, kind, part[0], part[1], flock, wait)
                )
                positions.append(await pending.result())
                pending = None
                granted.append(part)
            if self.replica is not None and max(positions) > 0:
                await self.replica.wait_applied(max(positions))
        except asyncio.CancelledError:
            self._settle_later(okey, kind, pending, part, granted)
            raise
        except LockRefused:
            self._undo(okey, kind, granted)
            raise
        except Exception:
            self._settle_later(okey, kind, pending, part, granted)
            raise

    async def _downgrade(
        self, ino: int, flock: bool, owner: int, ranges: list[tuple[int, int]]
    ) -> None:
        position = await self._release_position()
        for a, b in ranges:
            p = self.coordinator.acquire(
                Acquire(ino, owner, Kind.READ, a, b, flock, False, position)
            )
            try:
                await p.result()
            except LockRefused as exc:  # cannot happen: the owner holds WRITE there
                log.error("downgrading a lock was refused: %s", exc)

    def _settle_later(
        self,
        okey: OwnerKey,
        kind: Kind,
        pending: PendingLock | None,
        part: tuple[int, int],
        granted: list[tuple[int, int]],
    ) -> None:
        """After an interrupted request: withdraw what is still pending and undo what was
        granted, in the background; the owner's next request waits for it."""

        async def settle() -> None:
            try:
                if pending is not None and await pending.withdraw() is not None:
                    granted.append(part)
            except Exception:
                log.exception("withdrawing a lock request failed")
            self._undo(okey, kind, granted)

        fut = asyncio.ensure_future(settle())
        self._settling[okey] = fut

        def done(f: asyncio.Future[None]) -> None:
            if self._settling.get(okey) is f:
                del self._settling[okey]

        fut.add_done_callback(done)

    def _undo(self, okey: OwnerKey, kind: Kind, granted: list[tuple[int, int]]) -> None:
        """Bring the coordinator's locks of ``okey`` over the ``granted`` parts (of ``kind``)
        back to what the mirror holds there: releases and downgrades only."""
        ino, flock, owner = okey
        for a, b in granted:
            current = self.mirror.within((ino, flock), owner, a, b)
            for s, e in gaps(a, b, [(h.start, h.end) for h in current]):
                self.coordinator.release(ino, owner, flock, s, e, 0)
            if kind is Kind.WRITE:
                for h in current:
                    if h.kind is Kind.READ:
                        self._forget(
                            self.coordinator.acquire(
                                Acquire(ino, owner, Kind.READ, h.start, h.end, flock, False)
                            ).result()
                        )

    def _forget(self, aw: Awaitable[int]) -> None:
        async def run() -> None:
            with contextlib.suppress(LockRefused):
                await aw

        fut = asyncio.ensure_future(run())
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def _settled(self, okey: OwnerKey) -> None:
        fut = self._settling.get(okey)
        if fut is not None:
            await asyncio.shield(fut)

    # -- releasing -------------------------------------------------------------------------------
    async def _release(self, ino: int, flock: bool, owner: int, start: int, end: int) -> None:
        okey: OwnerKey = (ino, flock, owner)
        mkey: MirrorKey = (ino, flock)
        await self._settled(okey)
        held = self.mirror.within(mkey, owner, start, end)
        if not held:
            return
        position = 0
        if any(h.kind is Kind.WRITE for h in held):
            position = await self._release_position()
        # the mirror and the coordinator change together, with no await in between
        self.mirror.set(mkey, owner, Kind.UNLOCK, start, end)
        self.coordinator.release(ino, owner, flock, start, end, position)
        if not self.mirror.owned(mkey, owner):
            self._fhs.pop(okey, None)

    async def release_position(self) -> int:
        return await self._release_position()

    async def _release_position(self) -> int:
        if self.replica is None:
            return 0
        try:
            return await self.replica.flush_confirmed()
        except Exception:
            log.exception(
                "could not confirm this mount's writes before releasing a lock: another mount"
                " taking it may read older data"
            )
            return 0

    @staticmethod
    async def _shielded(aw: Awaitable[None]) -> bool:
        """Run ``aw`` to its end even if the caller is cancelled (an unlock is never half
        done); the caller's cancellation is then swallowed (the work it asked for is done) and
        reported: True when the caller was cancelled meanwhile."""
        fut = asyncio.ensure_future(aw)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            await fut
            return True
        return False
