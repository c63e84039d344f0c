"""Twin of ``LockCoordinator`` (application/ports/locks.py): ``MemoryLockHub`` runs the chain
server's own lock logic (``application.lock_server.ChainLocks``) in process, and each
``hub.coordinator()`` is one mount's coordinator. Moved here from application/locks.py
(docs/adr/0017-ports-and-twins.md); ``disconnect``/``reconnect`` let tests play a mount that
vanishes and comes back."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from application.lock_server import ChainLocks, LockConfig, LockSession
from application.locks import outcome, span_holder
from application.ports import Acquire, Clock, Holder, LockCoordinator, PendingLock
from domain.locks import Kind
from domain.wire import (
    Lock,
    LockCancel,
    LockResult,
    LockSpan,
    LockStatus,
    LockSync,
    LockTest,
    Unlock,
)


class MemoryLockHub:
    """The server's lock logic in process (``ChainLocks``): the twin of the chain server's lock
    service; several coordinators of one hub are several mounts of one chain."""

    def __init__(
        self,
        clock: Clock,
        config: LockConfig | None = None,
        *,
        grace_until: float = float("-inf"),
        durable_end: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.locks = ChainLocks(
            self.clock, config or LockConfig(), grace_until=grace_until, durable_end=durable_end
        )

    def coordinator(self, client_id: bytes | None = None) -> MemoryCoordinator:
        return MemoryCoordinator(self, client_id)

    def tick(self) -> None:
        self.locks.tick()


class _MemoryPending(PendingLock):
    def __init__(self, owner: MemoryCoordinator, req: int) -> None:
        self._owner = owner
        self.req = req
        self.future: asyncio.Future[LockResult] = asyncio.get_running_loop().create_future()

    async def result(self) -> int:
        return outcome(await asyncio.shield(self.future))

    async def withdraw(self) -> int | None:
        if not self.future.done():
            self._owner.cancel(self.req)
        if not self.future.done():
            return None
        msg = self.future.result()
        return msg.position if msg.status is LockStatus.GRANTED else None


class MemoryCoordinator(LockCoordinator):
    def __init__(self, hub: MemoryLockHub, client_id: bytes | None) -> None:
        self.hub = hub
        self.client_id = client_id
        self._reqs = itertools.count(1)
        self._pending: dict[int, _MemoryPending] = {}
        self.session: LockSession = hub.locks.attach(client_id, self._answer, self._expired)
        self.expired: str | None = None

    def _answer(self, msg: LockResult) -> None:
        p = self._pending.pop(msg.req, None)
        if p is not None and not p.future.done():
            p.future.set_result(msg)

    def _expired(self, reason: str) -> None:
        self.expired = reason

    def acquire(self, req: Acquire) -> PendingLock:
        p = _MemoryPending(self, next(self._reqs))
        self._pending[p.req] = p
        answer = self.hub.locks.handle(
            self.session,
            Lock(
                p.req, req.key, req.owner, int(req.kind), req.start, req.end, req.flock, req.wait,
                req.position,
            ),
        )  # fmt: skip
        if answer is not None:
            self._answer(answer)
        return p

    def cancel(self, req: int) -> None:
        answer = self.hub.locks.handle(self.session, LockCancel(req))
        if answer is not None:
            self._answer(answer)

    def release(
        self, key: int, owner: int, flock: bool, start: int, end: int, position: int
    ) -> None:
        self.hub.locks.handle(self.session, Unlock(key, owner, start, end, flock, position))

    async def test(
        self, key: int, owner: int, flock: bool, kind: Kind, start: int, end: int
    ) -> Holder | None:
        p = _MemoryPending(self, next(self._reqs))
        self._pending[p.req] = p
        answer = self.hub.locks.handle(
            self.session, LockTest(p.req, key, owner, int(kind), start, end, flock)
        )
        if answer is not None:
            self._answer(answer)
        msg = await p.future
        if msg.status is LockStatus.CONFLICT and msg.holder is not None:
            return span_holder(msg.holder)
        return None

    def disconnect(self) -> None:
        """The mount vanished (tests): its lease now runs out unless it ``reconnect``s."""
        self.hub.locks.detach(self.session, self._answer)
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_result(LockResult(p.req, LockStatus.REFUSED, reason="disconnected"))
        self._pending.clear()

    def reconnect(self, *, reclaim: bool = True) -> list[LockSpan]:
        """Attach again and sync what the mount holds; the locks lost."""
        self.session = self.hub.locks.attach(self.client_id, self._answer, self._expired)
        held = self.state.held_locks() if self.state is not None else []
        answer = self.hub.locks.handle(self.session, LockSync(next(self._reqs), held, 0, reclaim))
        assert answer is not None
        lost = [held[i] for i in answer.lost]
        if lost and self.state is not None:
            self.state.locks_lost(lost)
        return lost

    async def close(self) -> None:
        self.hub.locks.handle(self.session, LockSync(next(self._reqs), [], 0, False))
        self.hub.locks.detach(self.session, self._answer)
