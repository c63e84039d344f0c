"""Port of the clock (docs/adr/0011-clock-and-resolver.md).

Adapters: ``adapters.clock.SystemClock``, ``adapters.ntp.NtpClock``; twin:
``adapters.memory.FakeClock``. Contract: tests/contract/test_clock_contract.py."""

from __future__ import annotations

import abc


class Clock(abc.ABC):
    """Where the application reads the time: never from the system directly, so that tests can
    set it and NTP can correct it (docs/adr/0011-clock-and-resolver.md)."""

    @abc.abstractmethod
    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch (for event timestamps and file times)."""

    @abc.abstractmethod
    def now_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch (for file times)."""

    @abc.abstractmethod
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for timers)."""
