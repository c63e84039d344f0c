"""A replica applies its preset's clock tolerance to what the chain server streams (issue 12,
docs/adr/0014): a transaction stamped further ahead of the replica's clock than its tolerance is
refused (and retried until its time comes), while a replica with a wider tolerance applies it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.clock import SystemClock
from adapters.ws_server import WsChainServer
from domain.fs.model import ROOT_INO, FsError
from tests.replicas import Rig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class AheadClock(SystemClock):
    """The system clock plus ``ahead_ms`` (set by the test)."""

    ahead_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.ahead_ms

    def now_ns(self) -> int:
        return super().now_ns() + self.ahead_ms * 1_000_000


@pytest.fixture
async def clock_rig(tmp_path: Path, server: WsChainServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, f"{server.url}/db/clock")
    try:
        yield rig
    finally:
        for r in rig.replicas:
            with contextlib.suppress(Exception):
                await r.stop()


async def test_a_replica_refuses_events_beyond_its_tolerance(clock_rig: Rig) -> None:
    ahead = AheadClock()
    writer = await clock_rig.replica("writer", clock=ahead)
    strict = await clock_rig.replica("strict", clock_tolerance_ms=10_000)
    lenient = await clock_rig.replica("lenient", clock_tolerance_ms=60_000)
    ahead.ahead_ms = 20_000  # within the server's 30 s, beyond the strict replica's 10 s
    writer.write(b"f", b"from the future")
    writer.mounted.session.commit()
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(Exception):
                if lenient.read(b"f") == b"from the future":
                    break
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the strict replica has seen it too (and retried)
    with pytest.raises(FsError) as missing:
        strict.fs.lookup(ROOT_INO, b"f")
    assert missing.value.errno == errno.ENOENT
    error = strict.service.state.last_error or ""
    assert "stamped too far in the future" in error and "10 s ahead" in error, error
    assert lenient.service.state.last_error is None or "future" not in (
        lenient.service.state.last_error
    )
