"""The ``ReplicaSync`` contract (application/ports/locks.py): coherence of data under locks.
Run against the replication service (two replicas of a chain on an in-process chain server) and
its twin (``adapters.memory.MemoryReplicaHub``)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from adapters.memory import MemoryReplicaHub, MemoryReplicaSync
from application.ports import ReplicaSync
from domain.fs.model import FsError
from tests.replicas import Replica, Rig
from tests.server.conftest import Servers

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

T = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Side(Protocol):
    """One replica as the contract drives it: its ``ReplicaSync`` and its files."""

    @property
    def sync(self) -> ReplicaSync: ...

    def write(self, name: bytes, data: bytes) -> None: ...

    def read(self, name: bytes) -> bytes | None: ...


@dataclass
class TwinSide:
    sync: MemoryReplicaSync

    def write(self, name: bytes, data: bytes) -> None:
        self.sync.write(name, data)

    def read(self, name: bytes) -> bytes | None:
        return self.sync.read(name)


@dataclass
class ServiceSide:
    replica: Replica

    @property
    def sync(self) -> ReplicaSync:
        return self.replica.service

    def write(self, name: bytes, data: bytes) -> None:
        self.replica.write(name, data)

    def read(self, name: bytes) -> bytes | None:
        try:
            return self.replica.read(name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise


@dataclass
class Pair:
    #: the replica that made the chain
    a: Side
    #: a replica that joined it and has not written
    b: Side


@pytest.fixture(params=["memory", "replication"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    if request.param == "memory":
        hub = MemoryReplicaHub()
        yield Pair(TwinSide(hub.replica()), TwinSide(hub.replica()))
        return
    servers = Servers(tmp_path / "server")
    server = await servers.start()
    rig = Rig(tmp_path, f"{server.url}/db/sync")
    try:
        a = await rig.replica("a")
        b = await rig.replica("b")
        yield Pair(ServiceSide(a), ServiceSide(b))
    finally:
        for r in rig.replicas:
            await r.stop()
        await servers.stop_all()


class TestReplicaSyncContract:
    async def test_a_replica_that_never_wrote_gets_a_position_others_reach(
        self, pair: Pair
    ) -> None:
        position = await asyncio.wait_for(pair.b.sync.flush_confirmed(), T)
        assert position >= 0
        await asyncio.wait_for(pair.a.sync.wait_applied(position), T)

    async def test_a_flushed_write_is_seen_by_another_replica_once_it_applied_it(
        self, pair: Pair
    ) -> None:
        pair.a.write(b"notes", b"written on a")
        position = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        assert position > 0
        await asyncio.wait_for(pair.b.sync.wait_applied(position), T)
        assert pair.b.read(b"notes") == b"written on a"

    async def test_positions_never_go_back(self, pair: Pair) -> None:
        pair.a.write(b"f", b"1")
        first = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        pair.a.write(b"f", b"22")
        second = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        assert second > first
        again = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        assert again >= second
        await asyncio.wait_for(pair.b.sync.wait_applied(again), T)
        assert pair.b.read(b"f") == b"22"

    async def test_waiting_for_a_position_not_reached_yet_waits_for_it(self, pair: Pair) -> None:
        pair.a.write(b"f", b"1")
        first = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        waiting = asyncio.create_task(pair.b.sync.wait_applied(first + 1))
        try:
            await asyncio.sleep(0.3)
            assert not waiting.done(), "nothing the server holds reaches that position yet"
            pair.a.write(b"g", b"later")
            later = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
            assert later > first
            await asyncio.wait_for(waiting, T)
            assert pair.b.read(b"g") == b"later"
        finally:
            waiting.cancel()

    async def test_a_position_already_applied_returns_at_once(self, pair: Pair) -> None:
        await asyncio.wait_for(pair.b.sync.wait_applied(0), 1.0)
        pair.a.write(b"f", b"1")
        position = await asyncio.wait_for(pair.a.sync.flush_confirmed(), T)
        await asyncio.wait_for(pair.a.sync.wait_applied(position), 1.0)
