"""Distributed locks through the chain server on loopback (docs/adr/0010): real websockets,
raw clients (``ChainClient.lock_call``) and the mount's coordinator (``WsLockCoordinator``
under a ``LockService``, i.e. a mount without its kernel). Two clients conflict, release,
wait; a client that vanishes loses its locks after the lease and nobody else does; a reconnect
keeps them; a restarted server grants only reclaims during its grace period; a release carries
the writer's log position to the next holder."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.clock import SystemClock
from adapters.redolog import FileRedoLogFactory
from adapters.ws_client import ChainClient, ChainClientError
from adapters.ws_locks import WsLockCoordinator
from adapters.ws_server import WsChainServer
from application.chain_server import ChainServer, ServerConfig
from application.lock_server import LockConfig
from application.locks import LockService
from application.ports import LockConflict
from domain.locks import EOF, Kind
from domain.wire import (
    Lock,
    LockCancel,
    LockRenew,
    LockSpan,
    LockStatus,
    LockSync,
    LockTest,
    Unlock,
)
from tests.fakes import FastCrypto

from .conftest import Clients, LocalChain, Servers, create_chain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
R, W, U = Kind.READ, Kind.WRITE, Kind.UNLOCK
INO = 0xABCDEF02


def url(server: WsChainServer, chain: str = "fs") -> str:
    return f"{server.url}/db/{chain}"


def config(lease: float = 10.0, grace: float = 0.0) -> ServerConfig:
    return ServerConfig(locks=LockConfig(lease=lease, grace=grace))


async def ask(client: ChainClient, msg: Lock | LockTest | LockSync | LockRenew) -> LockStatus:
    return (await asyncio.wait_for(await client.lock_call(msg), 10)).status


class Mount:
    """A mount's lock stack without the kernel: LockService over WsLockCoordinator."""

    def __init__(self, server_url: str, **kw: object) -> None:
        self.coord = WsLockCoordinator(server_url, **kw)  # type: ignore[arg-type]
        self.inodes: dict[int, int] = {1: INO, 2: INO + 4}
        self.svc = LockService(self.coord, self.inodes.__getitem__)

    async def start(self) -> Mount:
        self.coord.start()
        assert await self.coord.wait_online(10), self.coord.last_error
        return self

    def die(self) -> None:
        """The mount process is killed: its connection drops, nothing is said."""
        task = self.coord._task
        assert task is not None
        task.cancel()
        client = self.coord._client
        if client is not None:
            client.ws.transport.abort()


@pytest.fixture
async def mounts() -> AsyncIterator[Callable[..., Mount]]:
    made: list[Mount] = []

    header = LocalChain().header  # the chain the mounts share (not created on the server)

    def make(server_url: str, **kw: object) -> Mount:
        kw.setdefault("header", header)
        m = Mount(server_url, **kw)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(m.coord.close(), 5)


# --- two raw clients ------------------------------------------------------------------------------
async def test_two_clients_conflict_release_and_wait(servers: Servers, clients: Clients) -> None:
    server = await servers.start(config())
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header, client_id=b"a" * 16)
    b = await clients.connect(url(server), header=chain.header, client_id=b"b" * 16)
    assert await ask(a, Lock(1, INO, 7, 2, 0, 100)) is LockStatus.GRANTED
    refused = await asyncio.wait_for(await b.lock_call(Lock(1, INO, 7, 1, 50, 51)), 10)
    assert refused.status is LockStatus.CONFLICT
    assert refused.holder == LockSpan(INO, 7, False, 0, 100, 2)
    assert await ask(b, Lock(2, INO, 7, 1, 100, 200)) is LockStatus.GRANTED  # no overlap
    assert await ask(b, LockTest(3, INO, 7, 2, 0, EOF)) is LockStatus.CONFLICT

    waiting = await b.lock_call(Lock(4, INO, 7, 2, 0, 10, wait=True))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await a.lock_send(Unlock(INO, 7, 0, 5))  # not enough: [5, 10) still held
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await a.lock_send(Unlock(INO, 7))
    assert (await asyncio.wait_for(waiting, 10)).status is LockStatus.GRANTED
    assert await ask(a, Lock(5, INO, 7, 1, 0, 1)) is LockStatus.CONFLICT


async def test_a_waiting_request_can_be_cancelled(servers: Servers, clients: Clients) -> None:
    server = await servers.start(config())
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    b = await clients.connect(url(server), header=chain.header)
    assert await ask(a, Lock(1, INO, 1, 2, flock=True)) is LockStatus.GRANTED
    waiting = await b.lock_call(Lock(9, INO, 1, 1, flock=True, wait=True))
    await b.lock_send(LockCancel(9))
    assert (await asyncio.wait_for(waiting, 10)).status is LockStatus.CANCELLED
    await a.lock_send(Unlock(INO, 1, flock=True))
    assert await ask(b, LockTest(10, INO, 1, 2, flock=True)) is LockStatus.GRANTED


async def test_a_release_carries_the_writers_position_to_the_next_holder(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.start(config())
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    await create_chain(a, chain)
    b = await clients.connect(url(server), header=chain.header)
    assert await ask(a, Lock(1, INO, 1, 2)) is LockStatus.GRANTED
    waiting = await b.lock_call(Lock(1, INO, 1, 1, wait=True))
    confirmed = await a.commit(chain.signed(chain.write(b"written under the lock")), timeout=10)
    await a.lock_send(Unlock(INO, 1, position=confirmed.end))
    grant = await asyncio.wait_for(waiting, 10)
    assert grant.status is LockStatus.GRANTED
    assert grant.position >= confirmed.end, "the reader must apply the writer's transaction"
    # a position beyond the durable end is clamped: nobody can make others wait forever
    assert await ask(b, Lock(2, INO + 4, 1, 2)) is LockStatus.GRANTED
    await b.lock_send(Unlock(INO + 4, 1, position=2**62))
    grant2 = await asyncio.wait_for(await a.lock_call(Lock(3, INO + 4, 1, 2)), 10)
    assert grant2.position <= server.app.hosts["fs"].durable_end


async def test_a_client_that_stops_renewing_is_disconnected_and_its_locks_freed(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.start(config(lease=0.5))
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header, client_id=b"a" * 16)
    b = await clients.connect(url(server), header=chain.header, client_id=b"b" * 16)
    assert await ask(a, Lock(1, INO, 1, 2)) is LockStatus.GRANTED
    waiting = await b.lock_call(Lock(1, INO, 1, 2, wait=True))
    for _ in range(6):  # b renews, a says nothing
        await asyncio.sleep(0.15)
        if not waiting.done():
            await ask(b, LockRenew(100 + _))
    assert (await asyncio.wait_for(waiting, 10)).status is LockStatus.GRANTED
    closed = await a.wait_closed(10)
    assert "lock lease expired" in str(closed)


# --- mounts (LockService over WsLockCoordinator) --------------------------------------------------
async def test_mounts_conflict_and_wait_through_the_server(servers: Servers, mounts) -> None:
    server = await servers.start(config())
    a = await mounts(url(server)).start()
    b = await mounts(url(server)).start()
    await a.svc.setlk(1, 10, W, 0, 100, wait=False)
    with pytest.raises(LockConflict):
        await b.svc.setlk(1, 20, R, 99, 100, wait=False)
    await b.svc.flock(1, 30, W, wait=False)  # flock is another namespace
    with pytest.raises(LockConflict):
        await a.svc.flock(1, 40, R, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(1, 20, W, 0, 1, wait=True))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await a.svc.setlk(1, 10, U, 0, EOF, wait=False)
    await asyncio.wait_for(waiter, 10)
    assert await a.svc.getlk(1, 11, R, 0, EOF) is not None


async def test_a_dead_mounts_locks_are_freed_after_the_lease_and_nobody_elses(
    servers: Servers, mounts
) -> None:
    lease = 1.0
    server = await servers.start(config(lease=lease))
    a = await mounts(url(server)).start()
    b = await mounts(url(server)).start()
    c = await mounts(url(server)).start()
    await a.svc.setlk(1, 1, W, 0, EOF, wait=False)
    await c.svc.setlk(2, 1, W, 0, EOF, wait=False)
    waiter = asyncio.create_task(b.svc.setlk(1, 1, W, 0, EOF, wait=True))
    await asyncio.sleep(0.1)
    died = time.monotonic()
    a.die()
    await asyncio.wait_for(waiter, 10)
    freed_after = time.monotonic() - died
    assert 0.5 * lease <= freed_after <= 3 * lease, freed_after
    with pytest.raises(LockConflict):  # c is alive: its lock stays, long after a's lease
        await b.svc.setlk(2, 1, R, 0, 1, wait=False)
    await asyncio.sleep(2 * lease)
    with pytest.raises(LockConflict):
        await b.svc.setlk(2, 1, R, 0, 1, wait=False)


async def test_a_mount_without_client_id_loses_its_locks_with_its_connection(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.start(config(lease=30.0))
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)  # no client id
    b = await clients.connect(url(server), header=chain.header)
    assert await ask(a, Lock(1, INO, 1, 2)) is LockStatus.GRANTED
    waiting = await b.lock_call(Lock(1, INO, 1, 2, wait=True))
    a.ws.transport.abort()
    assert (await asyncio.wait_for(waiting, 10)).status is LockStatus.GRANTED


async def test_a_reconnect_within_the_lease_keeps_the_locks(servers: Servers, mounts) -> None:
    lease = 1.0
    server = await servers.start(config(lease=lease))
    a = await mounts(url(server), backoff=(0.05, 0.1)).start()
    b = await mounts(url(server)).start()
    await a.svc.setlk(1, 1, W, 0, 10, wait=False)
    await a.coord.disconnect()  # the network drops a's connection; a reconnects
    await asyncio.sleep(0.3)
    assert await a.coord.wait_online(10)
    assert a.coord.reconnects >= 1
    await asyncio.sleep(2 * lease)  # well past the lease: a renews it
    with pytest.raises(LockConflict):
        await b.svc.setlk(1, 1, R, 5, 6, wait=False)
    # a's release made while offline reaches the server with the next sync
    await a.coord.disconnect()
    await a.svc.setlk(1, 1, U, 0, EOF, wait=False)
    assert await a.coord.wait_online(10)
    await asyncio.sleep(0.3)
    await b.svc.setlk(1, 1, W, 0, 10, wait=False)


# --- restart --------------------------------------------------------------------------------------
async def start_on(data_dir, port: int, cfg: ServerConfig) -> WsChainServer:
    app = ChainServer(FileRedoLogFactory(data_dir), FastCrypto(), SystemClock(), cfg)
    server = WsChainServer(app, "127.0.0.1", port)
    await server.start()
    return server


async def test_a_restarted_server_hands_a_held_lock_to_nobody_else(tmp_path, mounts) -> None:
    lease = 1.5
    first = await start_on(tmp_path / "data", 0, config(lease=lease, grace=lease))
    port = first.port
    second: WsChainServer | None = None
    try:
        # wait out the first server's own grace period
        await asyncio.sleep(lease)
        a = await mounts(url(first), backoff=(0.05, 0.1)).start()
        b = await mounts(url(first), backoff=(0.05, 0.1), request_timeout=30.0).start()
        await a.svc.setlk(1, 1, W, 0, EOF, wait=False)
        await first.close()  # the server restarts: its lock state is gone
        second = await start_on(tmp_path / "data", port, config(lease=lease, grace=lease))
        started = time.monotonic()
        assert await b.coord.wait_online(10)
        # b asks at once: it must not get a's lock, before or after the grace period
        with pytest.raises(LockConflict):
            await b.svc.setlk(1, 1, W, 0, EOF, wait=False)
        assert time.monotonic() - started >= 0.5 * lease, "answered only after the grace"
        assert a.coord.online
        # once a lets go, b gets it
        await a.svc.setlk(1, 1, U, 0, EOF, wait=False)
        await b.svc.setlk(1, 1, W, 0, EOF, wait=False)
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_after_a_restart_an_unclaimed_lock_is_free_once_grace_ends(tmp_path, mounts) -> None:
    lease = 1.0
    first = await start_on(tmp_path / "data", 0, config(lease=lease, grace=0))
    port = first.port
    second: WsChainServer | None = None
    try:
        a = await mounts(url(first)).start()
        await a.svc.setlk(1, 1, W, 0, EOF, wait=False)
        a.die()  # the holder died with the server
        await first.close()
        second = await start_on(tmp_path / "data", port, config(lease=lease, grace=lease))
        b = await mounts(url(second)).start()
        started = time.monotonic()
        await b.svc.setlk(1, 1, W, 0, EOF, wait=False)
        assert time.monotonic() - started >= 0.5 * lease
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_server_refuses_lock_messages_that_break_the_rules(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.start(
        ServerConfig(locks=LockConfig(lease=10.0, grace=0, max_waiting=1, max_locks=2))
    )
    chain = LocalChain()
    a = await clients.connect(url(server), header=chain.header)
    b = await clients.connect(url(server), header=chain.header)
    assert await ask(a, Lock(1, INO, 1, 2, 0, 10)) is LockStatus.GRANTED
    assert await ask(a, Lock(2, INO, 1, 2, 20, 30)) is LockStatus.GRANTED
    assert await ask(a, Lock(3, INO, 1, 2, 40, 50)) is LockStatus.REFUSED  # max_locks
    await a.lock_send(Unlock(INO, 1, 20, 30))
    assert await ask(a, Lock(4, INO, 1, 2, 40, 50)) is LockStatus.GRANTED
    pending = await b.lock_call(Lock(1, INO, 1, 2, wait=True))
    assert await ask(b, Lock(2, INO, 2, 2, wait=True)) is LockStatus.REFUSED  # max_waiting
    assert not pending.done()
    with pytest.raises(ChainClientError):
        await b.send_raw(b"\x81\xa1t\xa4lock")  # malformed: the connection ends
        await b.wait_closed(10)
        await ask(b, LockRenew(1))
