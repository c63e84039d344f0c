"""Twin of ``Clock`` (application/ports/time.py): a clock that moves only when told to. Moved
here from adapters/clock.py, which still re-exports it (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

from application.ports import Clock


class FakeClock(Clock):
    """A clock that moves only when told to (``advance``); wall time and monotonic time move
    together."""

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
