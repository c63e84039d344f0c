"""Ports of file locks across mounts (docs/adr/0010-lock-protocol.md): ``LockCoordinator`` (who
decides between mounts) and its ``PendingLock``, ``HeldLocks`` (what a coordinator asks of the
mount's lock service), ``ReplicaSync`` (coherence of data under locks), their requests and errors.

Adapters: ``adapters.ws_locks.WsLockCoordinator``; twin: ``adapters.memory.MemoryLockHub``
(``.coordinator()``); ``ReplicaSync`` is implemented by ``application.replication
.ReplicationService``. Contract: tests/contract/test_lock_coordinator_contract.py."""

from __future__ import annotations

import abc
import errno
from dataclasses import dataclass

from domain.locks import EOF, Kind
from domain.wire import LockSpan


# --- errors ---------------------------------------------------------------------------------------
class LockRefused(Exception):
    """A lock request that failed; ``errno`` is what the caller gets."""

    errno = errno.ENOLCK


class LockConflict(LockRefused):
    """Another owner holds a conflicting lock (EAGAIN = EWOULDBLOCK)."""

    errno = errno.EAGAIN

    def __init__(self, holder: Holder | None = None) -> None:
        super().__init__("a conflicting lock is held")
        self.holder = holder


class LockDeadlock(LockRefused):
    """Waiting would deadlock (EDEADLK)."""

    errno = errno.EDEADLK


class LockUnavailable(LockRefused):
    """The lock service cannot take the request (ENOLCK): too many waiters, no server."""

    errno = errno.ENOLCK


# --- ports ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Acquire:
    """Set ``owner``'s lock on ``[start, end)`` of object ``key`` to ``kind`` (READ or WRITE)."""

    key: int
    owner: int
    kind: Kind
    start: int = 0
    end: int = EOF
    flock: bool = False
    wait: bool = False
    #: when this downgrades a write lock: the position covering the holder's writes
    position: int = 0


@dataclass(frozen=True, slots=True)
class Holder:
    """A conflicting lock, as F_GETLK reports it (pid 0: held on another mount)."""

    kind: Kind
    start: int
    end: int
    pid: int = 0


class PendingLock(abc.ABC):
    """A request sent to the coordinator."""

    @abc.abstractmethod
    async def result(self) -> int:
        """The grant's coherence position; ``LockConflict`` / ``LockDeadlock`` /
        ``LockUnavailable`` when refused. Cancelling this wait does not withdraw the request:
        call ``withdraw``."""

    @abc.abstractmethod
    async def withdraw(self) -> int | None:
        """Withdraw the request: None when it was withdrawn (or refused), the grant's position
        when it had been granted first (the caller then undoes the grant)."""


class HeldLocks(abc.ABC):
    """What a coordinator asks of the mount's lock service after a reconnect."""

    @abc.abstractmethod
    def held_locks(self) -> list[LockSpan]:
        """Every lock this mount's owners hold (to reclaim)."""

    @abc.abstractmethod
    def locks_lost(self, lost: list[LockSpan]) -> None:
        """These locks could not be kept (lease expired, or taken by another client)."""

    @abc.abstractmethod
    async def release_position(self) -> int:
        """A position covering every write of this mount so far (``flush_confirmed``): for the
        releases a reconnect's ``LockSync`` makes of locks released while offline."""


class LockCoordinator(abc.ABC):
    """Port: who decides between mounts. ``acquire`` and ``release`` take effect in the order
    they are called (they must not reorder: an unlock followed by a lock of another owner of
    this mount must reach the server in that order)."""

    state: HeldLocks | None = None

    def bind(self, state: HeldLocks) -> None:
        """Tell the coordinator whom to ask what this mount holds (after a reconnect)."""
        self.state = state

    @abc.abstractmethod
    def acquire(self, req: Acquire) -> PendingLock:
        """Send the request now (in call order with ``release``); its answer comes through the
        ``PendingLock``. A request that conflicts with another mount's lock is refused with
        ``LockConflict`` unless ``req.wait``, then it is granted once the other lock goes."""

    @abc.abstractmethod
    def release(
        self, key: int, owner: int, flock: bool, start: int, end: int, position: int
    ) -> None:
        """Release ``owner``'s locks on ``[start, end)`` (no answer). ``position``: see
        ``ReplicaSync.flush_confirmed``."""

    @abc.abstractmethod
    async def test(
        self, key: int, owner: int, flock: bool, kind: Kind, start: int, end: int
    ) -> Holder | None:
        """F_GETLK: a lock of another owner that conflicts, or None."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every lock of this mount and stop: other mounts may then take them."""


class ReplicaSync(abc.ABC):
    """Port, implemented by the replication layer: coherence of data under locks."""

    @abc.abstractmethod
    async def flush_confirmed(self) -> int:
        """Write out, seal and upload every local change made so far, wait until the server
        confirmed it, and return a server log position at or after the end of every confirmed
        transaction of this mount (one that never wrote may return any position it reached, 0
        at the least). Positions returned never go back. While the server is unreachable it
        waits (raise only when the mount is going away): if it raises, the release goes on
        without the position and another mount may read older data (an error is logged)."""

    @abc.abstractmethod
    async def wait_applied(self, position: int) -> None:
        """Return once this replica has applied the server's log up to ``position`` (and
        invalidated what the kernel cached of the objects it changed)."""
