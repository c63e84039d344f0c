"""Fixtures shared by every tier: an in-memory log factory, a fake clock, fast real crypto."""

from __future__ import annotations

import pytest

from adapters.clock import FakeClock
from adapters.redolog import MemoryRedoLogFactory
from tests.fakes import FastCrypto


@pytest.fixture
def logs() -> MemoryRedoLogFactory:
    return MemoryRedoLogFactory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def crypto() -> FastCrypto:
    return FastCrypto()
