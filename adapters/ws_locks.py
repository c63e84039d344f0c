"""The mount's lock coordinator over the chain server (docs/adr/0010-lock-protocol.md): a
``LockCoordinator`` on its own websocket connection (``ChainClient``, not subscribed), so that
locks neither wait behind a history download nor end with a replication error.

* **One writer.** ``acquire``, ``release`` and the rest only queue frames; one task sends them in
  that order, so an unlock and a later lock of this mount reach the server in the order the
  kernel asked for them.
* **The session.** ``Hello.client_id`` is random per coordinator (per mount process): a
  reconnect finds the session's locks again; a restarted mount starts a new session and its old
  locks run out with their lease.
* **Lease.** Every answered request renews the lease; when idle, ``LockRenew`` every third of the
  lease (told in ``Welcome.limits.lock_lease_ms``). The coordinator remembers when it sent the
  last request the server answered: its lease certainly runs until then plus the lease.
* **Reconnect.** Offline, releases only update the mount's mirror (and remember the highest
  release position); requests wait (non-blocking ones at most ``request_timeout``). After a
  reconnect the first frame is ``LockSync`` with everything the mount holds, ``reclaim`` set
  only while this client's lease has certainly not run out: the server keeps what the session
  still holds, drops what the mount released meanwhile, and grants reclaims only during its
  grace period after a restart. What it cannot keep is reported lost (``HeldLocks.locks_lost``).
  Requests that had no final answer are sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable

from adapters.secure_channel import ClientWire
from adapters.ws_client import ChainClient, ChainClientError
from application.chain_token import ChainSigner
from application.locks import outcome
from application.ports import (
    Acquire,
    Holder,
    LockCoordinator,
    LockUnavailable,
    PendingLock,
)
from domain.locks import Kind
from domain.wire import (
    Lock,
    LockCancel,
    LockRenew,
    LockResult,
    LockStatus,
    LockSync,
    LockTest,
    Unlock,
)

log = logging.getLogger("wasmer_dfs.locks")

#: the share of the lease a client trusts: clocks of two machines drift a little
LEASE_MARGIN = 0.8


class _State(enum.Enum):
    OFFLINE = "offline"
    SYNCING = "syncing"
    ONLINE = "online"


class _Pending(PendingLock):
    def __init__(self, owner: WsLockCoordinator, msg: Lock) -> None:
        self.owner = owner
        self.msg = msg
        self.final: asyncio.Future[LockResult] = asyncio.get_running_loop().create_future()
        self.sent = False
        self.withdrawing = False

    @property
    def req(self) -> int:
        return self.msg.req

    def settle(self, msg: LockResult) -> None:
        if not self.final.done():
            self.final.set_result(msg)
        self.owner._pending.pop(self.req, None)

    async def result(self) -> int:
        timeout = None if self.msg.wait else self.owner.request_timeout
        try:
            async with asyncio.timeout(timeout):
                msg = await asyncio.shield(self.final)
        except TimeoutError:
            await self.withdraw()
            if self.final.done() and self.final.result().status is LockStatus.GRANTED:
                return self.final.result().position
            raise LockUnavailable("the chain server did not answer a lock request") from None
        return outcome(msg)

    async def withdraw(self) -> int | None:
        if not self.final.done():
            self.withdrawing = True
            if not self.sent:
                self.settle(LockResult(self.req, LockStatus.CANCELLED))
            else:
                self.owner._send(LockCancel(self.req))
            await asyncio.shield(self.final)
        msg = self.final.result()
        return msg.position if msg.status is LockStatus.GRANTED else None


class _Call:
    """An answered request that is not a lock (test, renew, sync)."""

    def __init__(self, msg: LockTest | LockRenew | LockSync) -> None:
        self.msg = msg
        self.answer: asyncio.Future[LockResult] = asyncio.get_running_loop().create_future()


Frame = _Pending | _Call | Unlock | LockCancel


class WsLockCoordinator(LockCoordinator):
    def __init__(
        self,
        url: str,
        *,
        header: bytes | None = None,
        client_id: bytes | None = None,
        open_timeout: float = 10.0,
        request_timeout: float = 30.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        clock: Callable[[], float] = time.monotonic,
        wire: ClientWire | None = None,
        signer: ChainSigner | None = None,
    ) -> None:
        self.url = url
        self.wire = wire
        self.signer = signer  # a token's, for a chain of a user or group (ADR 0018)
        self.header = header
        self.client_id = client_id or os.urandom(16)
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.backoff = backoff
        self.clock = clock
        self.lease = 10.0
        self.state_ = _State.OFFLINE
        self.last_error = ""
        self.reconnects = 0
        self._reqs = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._out: deque[Frame] = deque()
        self._after_sync: deque[Frame] = deque()
        self._kick = asyncio.Event()
        self._online = asyncio.Event()
        self._lease_from = float("-inf")
        #: the highest position any release of this mount carried (every LockSync repeats it:
        #: a release lost with a connection is made by the sync, with its position)
        self._release_high = 0
        self._released_offline = False
        self._calls: set[_Call] = set()
        self._client: ChainClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (and reconnect for as long as it runs)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_online(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._online.wait()
        except TimeoutError:
            return False
        return True

    @property
    def online(self) -> bool:
        return self.state_ is _State.ONLINE

    @property
    def lease_valid(self) -> bool:
        """Whether this client's lease has certainly not run out on the server."""
        return self.clock() - self._lease_from < self.lease * LEASE_MARGIN

    async def close(self) -> None:
        """Release every lock of this mount (when connected) and stop."""
        self._stopping = True
        if self.online and self._client is not None:
            call = _Call(LockSync(next(self._reqs), [], self._release_high, False))
            self._send(call)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await call.answer
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in list(self._pending.values()):
            p.settle(LockResult(p.req, LockStatus.REFUSED, reason="the mount is closing"))

    async def disconnect(self) -> None:
        """Drop the connection abruptly (tests: a network failure); it reconnects."""
        client = self._client
        if client is not None:
            client.ws.transport.abort()

    # -- the port --------------------------------------------------------------------------------
    def acquire(self, req: Acquire) -> PendingLock:
        msg = Lock(
            next(self._reqs), req.key, req.owner, int(req.kind), req.start, req.end, req.flock,
            req.wait, req.position,
        )  # fmt: skip
        p = _Pending(self, msg)
        self._pending[p.req] = p
        if self.state_ is not _State.OFFLINE:
            self._send(p)
        return p

    def release(
        self, key: int, owner: int, flock: bool, start: int, end: int, position: int
    ) -> None:
        self._release_high = max(self._release_high, position)
        if self.state_ is _State.OFFLINE:
            # the LockSync after the reconnect lists the mount's locks without this one
            self._released_offline = True
            return
        self._send(Unlock(key, owner, start, end, flock, position))

    async def test(
        self, key: int, owner: int, flock: bool, kind: Kind, start: int, end: int
    ) -> Holder | None:
        if not await self.wait_online(self.request_timeout):
            raise LockUnavailable("the chain server is not reachable")
        call = _Call(LockTest(next(self._reqs), key, owner, int(kind), start, end, flock))
        self._send(call)
        async with asyncio.timeout(self.request_timeout):
            msg = await call.answer
        if msg.status is LockStatus.CONFLICT and msg.holder is not None:
            return Holder(Kind(msg.holder.kind), msg.holder.start, msg.holder.end, 0)
        return None

    # -- sending ---------------------------------------------------------------------------------
    def _send(self, frame: Frame) -> None:
        if isinstance(frame, _Call):
            self._calls.add(frame)
            frame.answer.add_done_callback(lambda _, c=frame: self._calls.discard(c))  # type: ignore[misc]
        if self.state_ is _State.SYNCING:
            self._after_sync.append(frame)
        else:
            self._out.append(frame)
        self._kick.set()

    async def _writer(self, client: ChainClient) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._out:
                frame = self._out.popleft()
                sent_at = self.clock()
                if isinstance(frame, _Pending):
                    if frame.final.done():
                        continue
                    frame.sent = True
                    fut = await client.lock_call(frame.msg)
                    fut.add_done_callback(
                        lambda f, p=frame, t=sent_at: self._answered(f, t, p.settle)  # type: ignore[misc]
                    )
                elif isinstance(frame, _Call):
                    if frame.answer.done():
                        continue
                    fut = await client.lock_call(frame.msg)
                    fut.add_done_callback(
                        lambda f, c=frame, t=sent_at: self._answered(f, t, c.answer.set_result)  # type: ignore[misc]
                    )
                else:
                    await client.lock_send(frame)

    def _answered(
        self, fut: asyncio.Future[LockResult], sent_at: float, deliver: Callable[[LockResult], None]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the connection ended: the request is sent again after the reconnect
        self._lease_from = max(self._lease_from, sent_at)
        with contextlib.suppress(asyncio.InvalidStateError):
            deliver(fut.result())

    # -- the connection --------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stopping:
            try:
                await self._session()
                delay = self.backoff[0]
            except asyncio.CancelledError:
                raise
            except (ChainClientError, OSError, TimeoutError) as exc:
                self.last_error = str(exc)
                log.warning("lock server %s: %s (retrying in %.1f s)", self.url, exc, delay)
            except Exception as exc:  # a bug must not end the locks of the mount
                self.last_error = str(exc)
                log.exception("lock coordinator failed (retrying in %.1f s)", delay)
            finally:
                await self._offline()
            if self._stopping:
                break
            await asyncio.sleep(delay)
            # back soon enough to reclaim within the lease (see lease_valid)
            delay = min(delay * 2, self.backoff[1], self.lease / 5)
            self.reconnects += 1

    async def _session(self) -> None:
        client = await ChainClient.connect(
            self.url,
            header=self.header,
            client_id=self.client_id,
            open_timeout=self.open_timeout,
            agent="wasmer-dfs locks",
            wire=self.wire,
            signer=self.signer,
        )
        self._client = client
        self.lease = client.welcome.limits.lock_lease_ms / 1000
        if self._released_offline and self.state is not None:
            # locks released while offline are released by the sync: after the writes made
            # under them are confirmed (coherence)
            self._released_offline = False
            position = await self.state.release_position()
            self._release_high = max(self._release_high, position)
        # the snapshot and the switch to SYNCING happen together: what the mount releases from
        # now on is sent after the sync, what it released before is left out of the snapshot
        held = self.state.held_locks() if self.state is not None else []
        self.state_ = _State.SYNCING
        reclaim = self.lease_valid
        sync = LockSync(next(self._reqs), held, self._release_high, reclaim)
        sent_at = self.clock()
        async with asyncio.timeout(self.open_timeout):
            answer = await (await client.lock_call(sync))
        self._lease_from = max(self._lease_from, sent_at)
        if answer.lost and self.state is not None:
            self.state.locks_lost([held[i] for i in answer.lost if i < len(held)])
        # requests that had no final answer (made before the sync), then what came during
        # the sync, in order
        during = {id(f) for f in self._after_sync}
        self._out = deque(
            p
            for p in sorted(self._pending.values(), key=lambda p: p.req)
            if not p.sent and id(p) not in during
        )
        self._out.extend(self._after_sync)
        self._after_sync.clear()
        self.state_ = _State.ONLINE
        self._online.set()
        self._kick.set()
        writer = asyncio.create_task(self._writer(client))
        renewer = asyncio.create_task(self._renew())
        closed = asyncio.create_task(client.wait_closed())
        try:
            done, _ = await asyncio.wait(
                {writer, renewer, closed}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not closed and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if closed in done:
                raise closed.result()
        finally:
            for task in (writer, renewer, closed):
                task.cancel()
            await asyncio.gather(writer, renewer, closed, return_exceptions=True)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if self.clock() - self._lease_from >= self.lease / 3:
                self._send(_Call(LockRenew(next(self._reqs))))

    async def _offline(self) -> None:
        self.state_ = _State.OFFLINE
        self._online.clear()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        self._out.clear()
        self._after_sync.clear()
        for call in list(self._calls):
            if not call.answer.done():
                call.answer.set_exception(LockUnavailable("the connection to the server was lost"))
        self._calls.clear()
        for p in list(self._pending.values()):
            if p.withdrawing:
                # the sync after the reconnect drops whatever the server may have granted
                p.settle(LockResult(p.req, LockStatus.CANCELLED))
            else:
                p.sent = False
