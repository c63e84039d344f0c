"""Clocks: the system clock and a settable fake for tests."""

from __future__ import annotations

import time

from application.ports import Clock


class SystemClock(Clock):
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    """A clock that moves only when told to."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._ns = start_ns
        self._mono = 0.0

    def advance(self, seconds: float) -> None:
        self._ns += int(seconds * 1e9)
        self._mono += seconds

    def now_ms(self) -> int:
        return self._ns // 1_000_000

    def now_ns(self) -> int:
        return self._ns

    def monotonic(self) -> float:
        return self._mono
