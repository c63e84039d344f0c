"""The replication service driven directly (no kernel): replicas of one chain - each a session,
a file-system service and a ``ReplicationService`` - on an in-process chain server.

* concurrent writes to one file converge to the server's order on every replica, and a replay
  of a replica's log rebuilds the same state (``Origin.skipped`` is honoured);
* a large local transaction goes up in parts no larger than the batch size;
* an upload whose confirmation was lost with its connection is recognised in the stream of the
  next one and neither applied twice nor sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from adapters.remote import WsConnector
from adapters.ws_server import WsChainServer
from application.ports import RemoteChain, RemoteConnector, RemoteError
from domain.wire import CommitRecord, Confirmed, ServerMessage
from tests.replicas import Rig, settled

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def rig(tmp_path: Path, server: WsChainServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, f"{server.url}/db/svc")
    try:
        yield rig
    finally:
        for r in rig.replicas:
            with contextlib.suppress(Exception):
                await r.stop()


def server_transactions(server: WsChainServer) -> int:
    host = server.app.hosts["svc"]
    return host.transactions


async def test_concurrent_writes_converge_and_a_replay_agrees(rig: Rig) -> None:
    a = await rig.replica("a")
    a.write(b"f", b"0" * 100_000)
    b = await rig.replica("b")
    await settled([a, b])
    assert b.read(b"f") == b"0" * 100_000
    for i in range(20):  # both write the same pages and the inode, without waiting
        a.write(b"f", f"A{i}".encode() * 20_000)
        b.write(b"f", f"B{i}".encode() * 30_000)
        await asyncio.sleep(0)
    await settled([a, b])
    final = a.read(b"f")
    assert b.read(b"f") == final
    assert sum(r.service.state.stats.shadowed for r in (a, b)) > 0  # the race did happen
    # a replay of each log rebuilds what the replica shows (Origin.skipped is honoured)
    for r in (a, b):
        await r.stop()
    rig.replicas.clear()
    for name in ("a", "b"):
        again = await rig.replica(name, checkpoint=False)  # the whole log, not a checkpoint
        assert again.mounted.transactions > 20 and not again.mounted.from_checkpoint
        assert again.read(b"f") == final


async def test_a_large_transaction_goes_up_in_parts(rig: Rig, server: WsChainServer) -> None:
    a = await rig.replica("a", batch=64 * 1024)
    before = server_transactions(server)
    data = bytes(range(256)) * 4096  # 1 MiB in one local transaction
    a.write(b"big", data)
    await settled([a])
    assert server_transactions(server) - before >= 16
    b = await rig.replica("b")
    assert b.read(b"big") == data


class _LoseConfirmations(RemoteConnector):
    """Connections whose first commit reaches the server but whose confirmation is lost with
    the connection (it closes right after the server answered)."""

    def __init__(self, url: str) -> None:
        self.inner = WsConnector(url)
        self.lost = 0

    async def connect(self, header: bytes | None) -> RemoteChain:
        return _Lossy(await self.inner.connect(header), self)


class _Lossy(RemoteChain):
    def __init__(self, inner: RemoteChain, owner: _LoseConfirmations) -> None:
        self.inner, self.owner = inner, owner

    @property
    def header(self) -> bytes | None:
        return self.inner.header

    async def subscribe(self, from_position: int) -> None:
        await self.inner.subscribe(from_position)

    async def next(self) -> ServerMessage:
        return await self.inner.next()

    async def commit(self, records: Sequence[CommitRecord]) -> Confirmed:
        confirmed = await self.inner.commit(records)
        if self.owner.lost == 0:
            self.owner.lost += 1
            await self.inner.close()
            raise RemoteError("connection lost before the confirmation was seen")
        return confirmed

    async def close(self) -> None:
        await self.inner.close()


async def test_a_lost_confirmation_is_recognised_not_repeated(
    rig: Rig, server: WsChainServer
) -> None:
    a = await rig.replica("a")
    connector: _LoseConfirmations | None = None

    def lossy(url: str) -> RemoteConnector:
        nonlocal connector
        connector = _LoseConfirmations(url)
        return connector

    b = await rig.replica("b", connector=lossy)
    before = server_transactions(server)
    b.write(b"once", b"exactly once")
    await settled([a, b])
    assert connector is not None and connector.lost == 1
    assert server_transactions(server) == before + 1  # committed once, never again
    assert b.service.state.stats.rejected == 0
    assert "already in the chain" not in b.service.state.last_error
    assert a.read(b"once") == b"exactly once"
    assert b.read(b"once") == b"exactly once"
