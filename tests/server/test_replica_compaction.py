"""Compaction of a replica's log (docs/adr/0007, "Replicas"; application/replica_compaction.py),
driven directly on an in-process chain server with two replicas (tests/replicas.py):

* compacted while disconnected with uploads pending (what ``mount ws://... --compact-now``
  does before the replica connects): the log shrinks, the server position and server-order
  head survive, the reopened replica downloads only what it lacks, its pending uploads go up
  exactly once, and both replicas end identical;
* compacted in the background while connected and uploading (``compact_in_background`` with
  ``ReplicationService.swapping``): the queue is rebuilt at the swap, nothing is lost or sent
  twice, and a replay of the new log agrees;
* with a history window: the window's transactions stay as they were, bookkeeping included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.ws_server import WsChainServer
from application.maintenance import compact_in_background
from application.replica_compaction import ReplicaCompactor
from domain.compaction import CompactPolicy
from tests.replicas import Replica, Rig, settled

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

PAGE = 64 * 1024


@pytest.fixture
async def rig(tmp_path: Path, server: WsChainServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, f"{server.url}/db/rc")
    try:
        yield rig
    finally:
        for r in rig.replicas:
            with contextlib.suppress(Exception):
                await r.stop()


def server_events(server: WsChainServer) -> int:
    """Event records in the server's chain (seals and attestations aside)."""
    host = server.app.hosts["rc"]
    log = host.log
    return sum(1 for rec in log.scan() if not rec.commit)


def files(r: Replica, names: list[bytes]) -> dict[bytes, bytes]:
    return {n: r.read(n) for n in names}


async def disconnect(r: Replica) -> None:
    """Stop following the server; the replica stays open and writable."""
    await r.service.stop()
    r.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await r.task


def overwrite(r: Replica, name: bytes, rounds: int, size: int) -> bytes:
    data = b""
    for i in range(rounds):
        data = bytes([65 + i]) * size
        r.write(name, data)
        r.fs.flush_all()
        r.mounted.session.commit()
    return data


async def test_compacted_offline_with_pending_uploads(rig: Rig, server: WsChainServer) -> None:
    a = await rig.replica("a")
    b = await rig.replica("b")
    live = overwrite(a, b"big", 5, 8 * PAGE)  # written 5 times over
    b.write(b"fromb", b"b1" * 1000)
    await settled([a, b])
    await disconnect(a)
    # uploads pending on a, news on the server for a to download
    pending = overwrite(a, b"mine", 2, 3 * PAGE)
    a.write(b"big", b"Z" * 100, 50)
    b.write(b"fromb", b"b2" * 2000)
    b.write(b"late", b"L" * 5000)
    await settled([b])
    replica = a.service.replica
    cursor, head, waiting = replica.remote_cursor, replica.remote_head, replica.pending
    assert waiting >= 2 and cursor > 0 and head
    up = replica.next_upload(1 << 40)  # what is to go up (not sent: the replica is offline)
    assert up is not None
    compactor = a.mounted.compactor
    assert isinstance(compactor, ReplicaCompactor)
    before = a.mounted.session.log.size()
    r = compactor.compact()
    assert r.after < before * 0.5, (r.before, r.after)
    expected_big = live[:50] + b"Z" * 100 + live[150:]
    assert a.read(b"big") == expected_big and a.read(b"mine") == pending
    # the bookkeeping read back from the new log: same server position and head, same queue
    replica.reload()
    assert (replica.remote_cursor, replica.remote_head) == (cursor, head)
    assert replica.pending == waiting
    a.mounted.close()
    rig.replicas.remove(a)
    events_before = server_events(server)
    a2 = await rig.replica("a", checkpoint=False)  # a replay of the whole compacted log
    assert a2.service.replica.remote_cursor >= cursor
    await settled([a2, b])
    stats = a2.service.state.stats
    assert stats.applied <= 3, stats  # only b's news came down, not the whole chain again
    assert stats.rejected == 0 and "already" not in a2.service.state.last_error
    # what went up is exactly the events of the pending transactions, once
    uploaded = server_events(server) - events_before
    names = [b"big", b"mine", b"fromb", b"late"]
    assert files(a2, names) == files(b, names)
    assert a2.read(b"big") == expected_big and b.read(b"late") == b"L" * 5000
    assert uploaded == up.events, (uploaded, up.events)
    c = await rig.replica("c")
    await settled([a2, b, c])
    assert files(c, names) == files(b, names)


async def test_compacted_in_the_background_while_uploading(rig: Rig) -> None:
    a = await rig.replica("a", batch=2 * PAGE)
    b = await rig.replica("b")
    overwrite(a, b"big", 5, 8 * PAGE)
    await settled([a, b])
    compactor = a.mounted.compactor
    assert compactor is not None
    before = a.mounted.session.log.size()
    # writes keep going up (small batches: several in flight over the compaction)
    data = overwrite(a, b"more", 3, 6 * PAGE)
    job = asyncio.create_task(compact_in_background(compactor, a.service.swapping))
    tail = overwrite(a, b"during", 2, 4 * PAGE)
    b.write(b"fromb", b"x" * 3000)
    await job
    assert compactor.last is not None and compactor.completed == 1, a.service.state.last_error
    assert compactor.last.after < before
    assert a.service.replica.generation == 1
    await settled([a, b])
    names = [b"big", b"more", b"during", b"fromb"]
    assert files(a, names) == files(b, names)
    assert a.read(b"more") == data and b.read(b"during") == tail
    assert a.service.state.stats.rejected == 0 and b.service.state.stats.rejected == 0
    cursor, head = a.service.replica.remote_cursor, a.service.replica.remote_head
    await a.stop()
    rig.replicas.remove(a)
    again = await rig.replica("a", checkpoint=False)
    assert (again.service.replica.remote_cursor, again.service.replica.remote_head) == (
        cursor,
        head,
    )
    assert again.service.replica.pending == 0
    assert files(again, names) == files(b, names)


async def test_a_history_window_keeps_the_replicas_recent_past(rig: Rig) -> None:
    a = await rig.replica("a")
    overwrite(a, b"old", 4, 2 * PAGE)
    await settled([a])
    await asyncio.sleep(0.3)
    recent = overwrite(a, b"new", 3, 2 * PAGE)
    await settled([a])
    await disconnect(a)
    a.write(b"offline", b"o" * 1000)
    a.fs.flush_all()
    a.mounted.session.commit()
    compactor = a.mounted.compactor
    assert compactor is not None
    compactor.policy = CompactPolicy(keep_history_ms=250)
    replica = a.service.replica
    cursor, head, waiting = replica.remote_cursor, replica.remote_head, replica.pending
    assert waiting > 0
    r = compactor.compact()
    assert r.history_events > 0  # the window's transactions were copied as they were
    assert r.kept < r.events
    a.service.replica.reload()
    assert (a.service.replica.remote_cursor, a.service.replica.remote_head) == (cursor, head)
    assert a.service.replica.pending == waiting
    assert a.read(b"new") == recent
