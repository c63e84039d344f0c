"""What a streamed transaction changes on a replica beyond its log (application/replica_effects.py):
the names and inodes its kernel is told to forget, driven through ``ReplicationService`` on an
in-process server with the ``MemoryKernelCache`` twin in place of the kernel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.memory import MemoryKernelCache
from adapters.ws_server import WsChainServer
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
