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
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.redolog import FileRedoLogFactory
from adapters.remote import WsConnector, fetch_header
from adapters.ws_server import WsChainServer
from application.filesystem import FileSystemService
from application.mount import Mounted, MountRequest, MountService
from application.ports import Clock, RemoteChain, RemoteConnector, RemoteError
from application.replica_log import ReplicaLog
from application.replication import RecoveryMode, ReplicationService
from application.session import Formats
from domain.fs.model import ROOT_INO
from domain.wire import CommitRecord, Confirmed, ServerMessage
from tests.fakes import FAST_KDF, FastCrypto

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PASSCODE = b"replication service"


@dataclass
class Replica:
    logdir: Path
    mounted: Mounted
    service: ReplicationService
    task: asyncio.Task[None]

    @property
    def fs(self) -> FileSystemService:
        return self.mounted.fs

    def read(self, name: bytes) -> bytes:
        attr = self.fs.lookup(ROOT_INO, name)
        fh = self.fs.open(attr.ino)
        try:
            return self.fs.read(fh, 0, attr.size + 1)
        finally:
            self.fs.release(fh)

    def write(self, name: bytes, data: bytes, offset: int = 0) -> None:
        try:
            ino = self.fs.lookup(ROOT_INO, name).ino
            fh = self.fs.open(ino)
        except Exception:
            fh, _ = self.fs.create(ROOT_INO, name, stat.S_IFREG | 0o644, 0, 0)
        try:
            self.fs.write(fh, offset, data)
        finally:
            self.fs.release(fh)

    async def stop(self) -> None:
        await self.service.stop()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.mounted.close()


@dataclass
class Rig:
    tmp: Path
    url: str
    replicas: list[Replica] = field(default_factory=list)

    async def replica(
        self,
        name: str,
        *,
        connector: Callable[[str], RemoteConnector] = WsConnector,
        batch: int | None = None,
        checkpoint: bool = True,
        clock: Clock | None = None,
        clock_tolerance_ms: int | None = None,
    ) -> Replica:
        logdir = self.tmp / name
        logdir.mkdir(exist_ok=True)
        logs = FileRedoLogFactory(logdir)
        header = None if logs.exists("local") else await fetch_header(self.url)
        from adapters.clock import SystemClock

        request = MountRequest(
            "local", PASSCODE, Formats(), 0, 0, kdf=FAST_KDF, remote=True, replica_header=header,
            use_checkpoint=checkpoint,
        )  # fmt: skip
        mounted = MountService(logs, FastCrypto(), clock or SystemClock()).open(request)
        service = ReplicationService(
            mounted.session, ReplicaLog(mounted.session), mounted.fs, connector(self.url),
            RecoveryMode.ASYNC, clock_tolerance_ms=clock_tolerance_ms,
        )  # fmt: skip
        if batch is not None:
            service.UPLOAD_BATCH_BYTES = batch
        replica = Replica(logdir, mounted, service, asyncio.create_task(service.run()))
        self.replicas.append(replica)
        assert await service.wait_synced(30), service.state.last_error
        return replica


@pytest.fixture
async def rig(tmp_path: Path, server: WsChainServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, f"{server.url}/db/svc")
    try:
        yield rig
    finally:
        for r in rig.replicas:
            with contextlib.suppress(Exception):
                await r.stop()


async def settled(replicas: Sequence[Replica], timeout: float = 30.0) -> None:
    """Every local change confirmed and every replica at the same server position."""
    async with asyncio.timeout(timeout):
        while True:
            for r in replicas:
                r.fs.flush_all()
                r.mounted.session.commit()
            cursors = {r.service.replica.remote_cursor for r in replicas}
            if len(cursors) == 1 and all(r.service.replica.pending == 0 for r in replicas):
                return
            await asyncio.sleep(0.02)


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
