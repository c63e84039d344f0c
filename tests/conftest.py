"""Fixtures shared by every tier: an in-memory log factory, a fake clock, fast real crypto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.clock import FakeClock
from adapters.memory.log import MemoryRedoLogFactory
from tests.fakes import FastCrypto
from tests.tmpfs import Tmpfs, capped_tmpfs
from tests.tmpfs import unavailable as tmpfs_unavailable


@pytest.fixture
def logs() -> MemoryRedoLogFactory:
    return MemoryRedoLogFactory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def crypto() -> FastCrypto:
    return FastCrypto()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 16 MiB tmpfs at ``tmp_path / "tmpfs"`` (root only), unmounted at teardown even when
    the test fails. Ask for it before fixtures that start processes writing to it (mounts,
    servers), so that they are stopped first."""
    reason = tmpfs_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with capped_tmpfs(tmp_path / "tmpfs", 16 << 20) as fs:
        yield fs
