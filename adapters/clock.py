"""Clocks: the system clock. The twin ``FakeClock`` lives in adapters/memory/clock.py and is
re-exported here for the many tests that import it from here (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import time

from adapters.memory.clock import FakeClock
from application.ports import Clock

__all__ = ["FakeClock", "SystemClock"]


class SystemClock(Clock):
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()
