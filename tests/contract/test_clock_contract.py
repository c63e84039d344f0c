"""The ``Clock`` port's contract (application/ports/time.py), run against every clock: the
system clock, the NTP clock (against an SNTP server on 127.0.0.1 whose clock runs two hours
ahead) and the twin ``FakeClock`` (docs/adr/0017-ports-and-twins.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from adapters.clock import SystemClock
from adapters.memory import FakeClock
from adapters.ntp import NtpClock
from application.ports import Clock
from tests.sntp_server import HOUR, MS, NS, SntpServer

FAKE_START_NS = 1_750_000_000_123_456_789
NTP_OFFSET_NS = 2 * HOUR + 345 * MS


@dataclass
class Subject:
    """A clock, what it should read now (within ``tolerance_ns``), and how to let time pass on
    it."""

    clock: Clock
    reference_ns: Callable[[], int]
    tolerance_ns: int
    wait: Callable[[float], None]


@pytest.fixture(params=["system", "ntp", "fake"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "system":
        yield Subject(SystemClock(), time.time_ns, 0, time.sleep)
    elif request.param == "ntp":
        with SntpServer(NTP_OFFSET_NS) as srv:
            clock = NtpClock("127.0.0.1", srv.port)
            clock.sync()
            assert clock.delay_ns is not None
            # right within half the round trip, plus 0.5 ms for reading the clocks in turn
            tolerance = clock.delay_ns // 2 + MS // 2
            yield Subject(clock, lambda: time.time_ns() + NTP_OFFSET_NS, tolerance, time.sleep)
    else:
        fake = FakeClock(start_ns=FAKE_START_NS)
        yield Subject(fake, lambda: FAKE_START_NS, 0, fake.advance)  # (no test waits first)


class TestClockContract:
    def test_it_reads_the_expected_time(self, subject: Subject) -> None:
        low = subject.reference_ns()
        now = subject.clock.now_ns()
        high = subject.reference_ns()
        assert isinstance(now, int)
        assert low - subject.tolerance_ns <= now <= high + subject.tolerance_ns

    def test_now_ms_is_now_ns_in_milliseconds(self, subject: Subject) -> None:
        clock = subject.clock
        ns, ms, ns_after = clock.now_ns(), clock.now_ms(), clock.now_ns()
        assert isinstance(ms, int)
        assert ns // MS <= ms <= ns_after // MS

    def test_wall_time_and_monotonic_time_pass_together(self, subject: Subject) -> None:
        clock = subject.clock
        m0 = clock.monotonic()
        w0 = clock.now_ns()
        m1 = clock.monotonic()
        subject.wait(0.03)
        m2 = clock.monotonic()
        w1 = clock.now_ns()
        m3 = clock.monotonic()
        assert isinstance(m0, float)
        assert m2 - m1 >= 0.029
        assert (m2 - m1) * NS - MS <= w1 - w0 <= (m3 - m0) * NS + MS

    def test_monotonic_never_goes_back(self, subject: Subject) -> None:
        readings = [subject.clock.monotonic() for _ in range(2000)]
        assert readings == sorted(readings)


def test_the_fake_clock_reads_where_it_was_set_and_moves_only_when_told() -> None:
    clock = FakeClock(start_ns=FAKE_START_NS)
    assert clock.now_ns() == FAKE_START_NS
    assert (clock.now_ns(), clock.monotonic()) == (FAKE_START_NS, 0.0)
    clock.advance(1.5)
    assert (clock.now_ns(), clock.monotonic()) == (FAKE_START_NS + 1_500_000_000, 1.5)
