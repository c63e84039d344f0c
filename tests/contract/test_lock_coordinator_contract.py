"""The ``LockCoordinator`` port's contract (application/ports/locks.py), run against the twin
(``MemoryLockHub``: two coordinators of one hub are two mounts) and the websocket adapter
(``WsLockCoordinator``: two coordinators on a chain server in process, on 127.0.0.1).
Two mounts conflict, see each other's locks with ``test``, release, wait, withdraw and close
(docs/adr/0010-lock-protocol.md, docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.clock import SystemClock
from adapters.memory import MemoryLockHub
from adapters.redolog import FileRedoLogFactory
from adapters.ws_locks import WsLockCoordinator
from adapters.ws_server import WsChainServer
from application.chain_server import ChainServer, ServerConfig
from application.lock_server import LockConfig
from application.ports import Acquire, Holder, LockConflict, LockCoordinator
from domain.locks import EOF, Kind
from tests.fakes import FastCrypto
from tests.server.conftest import LocalChain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
R, W = Kind.READ, Kind.WRITE
KEY = 0x1234_5678_9ABC_DEF2
T = 10.0  # seconds any single answer may take
#: a fresh server grants only reclaims during its grace period (ADR 0010); this one has none
NO_GRACE = ServerConfig(locks=LockConfig(grace=0.0))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Mounts = Callable[[], Awaitable[LockCoordinator]]


@pytest.fixture(params=["memory", "ws"])
async def mounts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mounts]:
    """Makes coordinators of one chain, each one mount's; all closed at teardown."""
    made: list[LockCoordinator] = []
    server: WsChainServer | None = None
    if request.param == "memory":
        hub = MemoryLockHub(SystemClock())

        async def make() -> LockCoordinator:
            made.append(hub.coordinator())
            return made[-1]
    else:
        app = ChainServer(FileRedoLogFactory(tmp_path), FastCrypto(), SystemClock(), NO_GRACE)
        server = WsChainServer(app, "127.0.0.1", 0)
        await server.start()
        url, header = f"{server.url}/db/fs", LocalChain().header

        async def make() -> LockCoordinator:
            coordinator = WsLockCoordinator(url, header=header)
            made.append(coordinator)
            coordinator.start()
            assert await coordinator.wait_online(T), coordinator.last_error
            return coordinator

    try:
        yield make
    finally:
        for coordinator in made:
            await asyncio.wait_for(coordinator.close(), T)
        if server is not None:
            await server.close()


async def granted(coordinator: LockCoordinator, req: Acquire) -> int:
    return await asyncio.wait_for(coordinator.acquire(req).result(), T)


class TestLockCoordinatorContract:
    async def test_a_grant_gives_a_position(self, mounts: Mounts) -> None:
        a = await mounts()
        position = await granted(a, Acquire(KEY, owner=1, kind=W, start=0, end=100))
        assert isinstance(position, int)
        assert position >= 0

    async def test_another_mount_conflicts_and_sees_the_holder(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, start=0, end=100))
        with pytest.raises(LockConflict):
            await granted(b, Acquire(KEY, owner=2, kind=R, start=50, end=51))
        holder = await asyncio.wait_for(b.test(KEY, 2, False, W, 0, EOF), T)
        assert holder == Holder(W, 0, 100, 0)
        # no overlap, no conflict; readers share
        await granted(b, Acquire(KEY, owner=2, kind=W, start=100, end=200))
        assert await asyncio.wait_for(a.test(KEY, 1, False, R, 300, 400), T) is None

    async def test_read_locks_are_shared(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=R, flock=True))
        await granted(b, Acquire(KEY, owner=2, kind=R, flock=True))
        with pytest.raises(LockConflict):
            await granted(b, Acquire(KEY, owner=3, kind=W, flock=True))

    async def test_a_release_lets_the_other_mount_lock(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, start=0, end=100))
        a.release(KEY, 1, False, 0, 100, 0)
        await granted(b, Acquire(KEY, owner=2, kind=W, start=0, end=100))

    async def test_a_waiting_request_is_granted_once_the_lock_is_released(
        self, mounts: Mounts
    ) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, flock=True))
        waiting = b.acquire(Acquire(KEY, owner=2, kind=W, flock=True, wait=True))
        task = asyncio.ensure_future(waiting.result())
        await asyncio.sleep(0.2)
        assert not task.done()
        a.release(KEY, 1, True, 0, EOF, 0)
        assert isinstance(await asyncio.wait_for(task, T), int)
        with pytest.raises(LockConflict):
            await granted(a, Acquire(KEY, owner=1, kind=R, flock=True))

    async def test_a_withdrawn_request_leaves_nothing_behind(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, flock=True))
        waiting = b.acquire(Acquire(KEY, owner=2, kind=W, flock=True, wait=True))
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(waiting.withdraw(), T) is None
        a.release(KEY, 1, True, 0, EOF, 0)
        await asyncio.sleep(0.2)  # had it stayed queued, it would be granted now
        await granted(a, Acquire(KEY, owner=3, kind=W, flock=True))

    async def test_release_then_acquire_keep_their_order(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, start=0, end=10))
        a.release(KEY, 1, False, 0, 10, 0)  # no answer awaited: the next call must not pass it
        await granted(a, Acquire(KEY, owner=2, kind=W, start=0, end=10))
        with pytest.raises(LockConflict):
            await granted(b, Acquire(KEY, owner=3, kind=W, start=0, end=10))

    async def test_close_releases_every_lock_of_the_mount(self, mounts: Mounts) -> None:
        a, b = await mounts(), await mounts()
        await granted(a, Acquire(KEY, owner=1, kind=W, start=0, end=EOF))
        await granted(a, Acquire(KEY + 4, owner=1, kind=W, flock=True))
        await asyncio.wait_for(a.close(), T)
        await granted(b, Acquire(KEY, owner=2, kind=W, start=0, end=EOF))
        await granted(b, Acquire(KEY + 4, owner=2, kind=W, flock=True))
