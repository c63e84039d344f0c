"""What a streamed transaction changes on a replica beyond its log (application/replica_effects.py):
the names and inodes its kernel is told to forget, driven through ``ReplicationService`` on an
in-process server with the ``MemoryKernelCache`` twin in place of the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.memory import MemoryKernelCache
from adapters.remote import FuseKernelCache
from adapters.ws_server import WsChainServer
from application.replication import RecoveryMode
from domain.fs.model import ROOT_INO
from tests.replicas import Rig, settled

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def rig(tmp_path: Path, server: WsChainServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, f"{server.url}/db/effects")
    try:
        yield rig
    finally:
        for r in rig.replicas:
            with contextlib.suppress(Exception):
                await r.stop()


async def test_a_remote_create_write_and_rename_reach_the_kernel_cache(rig: Rig) -> None:
    a = await rig.replica("a")
    b = await rig.replica("b")
    kernel = b.service.kernel = MemoryKernelCache()

    a.write(b"new", b"contents")
    await settled([a, b])
    ino = b.fs.lookup(ROOT_INO, b"new").ino
    assert b.read(b"new") == b"contents"
    assert (ROOT_INO, b"new") in kernel.entries  # the new name in the root
    assert kernel.forgotten(ROOT_INO)  # the directory changed
    assert kernel.forgotten(ino)  # the file's attributes and pages

    kernel.calls.clear()
    kernel.entries.clear()
    kernel.inodes.clear()
    a.fs.rename(ROOT_INO, b"new", ROOT_INO, b"renamed")
    await settled([a, b])
    assert b.fs.lookup(ROOT_INO, b"renamed").ino == ino
    # the name it had before the transaction applied is forgotten too, not only the new one
    assert {(ROOT_INO, b"new"), (ROOT_INO, b"renamed")} <= kernel.entries
    assert kernel.forgotten(ROOT_INO)


async def test_without_a_kernel_the_stream_is_still_applied(rig: Rig) -> None:
    a = await rig.replica("a")
    b = await rig.replica("b")
    assert b.service.kernel is None
    a.write(b"plain", b"x" * 10)
    await settled([a, b])
    assert b.read(b"plain") == b"x" * 10


async def test_a_metadata_change_never_waits_for_the_kernel_to_forget(rig: Rig) -> None:
    """The hang of two replicas creating in one directory (docs/adr/0009, "Kernel caches"):
    B's kernel holds an invalidation of a name A created (the kernel waits for the directory's
    lock, which a create in flight there holds); B's own create must still be confirmed and B
    must go on applying the stream. A lock grant (``wait_applied``) does wait for the kernel."""
    a = await rig.replica("a")
    b = await rig.replica("b")
    entered, release = threading.Event(), threading.Event()

    def kernel_busy(inodes: list[int], entries: list[tuple[int, bytes]]) -> None:
        entered.set()
        release.wait(30)

    kernel = b.service.kernel = FuseKernelCache(forget=kernel_busy)
    b.service.mode = RecoveryMode.READONLY_ASYNC  # a create waits for the server's confirmation
    try:
        a.write(b"from-a", b"a")
        assert await asyncio.to_thread(entered.wait, 30)  # B's kernel is stuck on A's name
        b.write(b"from-b", b"b")
        await asyncio.wait_for(b.service.after_metadata(), 15)
        assert b.service.replica.pending == 0
        a.write(b"later", b"c")
        await settled([a, b])
        assert b.read(b"later") == b"c"  # the stream goes on while the kernel is busy
        grant = asyncio.ensure_future(b.service.wait_applied(b.service.replica.remote_cursor))
        await asyncio.sleep(0.2)
        assert not grant.done()  # coherence: not granted before the kernel has forgotten
        release.set()
        await asyncio.wait_for(grant, 10)
    finally:
        release.set()
        b.service.kernel = None
        await kernel.close()
