"""The SNTP client against a tiny SNTP server on 127.0.0.1 whose clock runs ahead or behind by a
chosen offset (no internet needed). The ``Clock`` contract, run against every clock, is in
tests/contract/test_clock_contract.py."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator

import pytest

from adapters.clock import FakeClock, SystemClock
from adapters.memory import MemoryResolver
from adapters.ntp import ClockSyncError, NtpClock, from_ntp, make_clock, to_ntp
from application.ports import Resolver
from tests.fakes import closed_udp_port
from tests.sntp_server import HOUR, MS, NS, NTP_UNIX_DELTA, YEAR, SntpServer, ntp_timestamp


@pytest.fixture
def sntp() -> Iterator[SntpServer]:
    with SntpServer() as srv:
        yield srv


def within(clock: NtpClock) -> int:
    """How far a synchronised clock may be from the truth: the server stamped its time between
    our send and our receive, so the offset is right within half the round trip (plus 0.5 ms
    for reading the clocks one after the other; on loopback about a millisecond in all)."""
    assert clock.delay_ns is not None
    return clock.delay_ns // 2 + MS // 2


def assert_offset(clock: NtpClock, true_offset_ns: int) -> None:
    assert clock.synced
    assert abs(clock.offset_ns - true_offset_ns) <= within(clock)
    assert within(clock) < 250 * MS  # a loopback round trip, even on a loaded machine


def assert_reads(clock: NtpClock, true_offset_ns: int) -> None:
    before = time.time_ns()
    now = clock.now_ns()
    after = time.time_ns()
    assert before + true_offset_ns - within(clock) <= now <= after + true_offset_ns + within(clock)


# --- the SNTP client -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "offset_ns",
    [0, 250 * MS, -250 * MS, HOUR, -10 * YEAR, 15 * YEAR],  # +15 years: past the 2036 roll-over
)
def test_sync_measures_the_servers_offset(offset_ns: int) -> None:
    with SntpServer(offset_ns) as srv:
        clock = NtpClock("127.0.0.1", srv.port)
        assert clock.sync() == clock.offset_ns
    assert_offset(clock, offset_ns)
    assert_reads(clock, offset_ns)


@pytest.mark.parametrize("base", [SystemClock, FakeClock])
def test_the_round_trip_is_measured_and_bounds_the_error(sntp: SntpServer, base: type) -> None:
    # the request takes 40 ms to reach the server's clock, the answer none to come back: the
    # offset is then wrong by 20 ms (SNTP assumes symmetric paths), which half the measured
    # round trip must cover; the round trip is timed on the monotonic clock, so it is measured
    # even when the base clock stands still
    sntp.offset_ns, sntp.hold = HOUR, 0.04
    clock = NtpClock("127.0.0.1", sntp.port, base=base())
    low = time.time_ns() - clock.base.now_ns() + HOUR
    measured = clock.sync()
    high = time.time_ns() - clock.base.now_ns() + HOUR
    assert clock.delay_ns is not None and 40 * MS <= clock.delay_ns < 500 * MS
    assert low - within(clock) <= measured <= high + within(clock)


def test_the_request_is_an_sntp_v4_client_request_that_hides_our_clock(sntp: SntpServer) -> None:
    NtpClock("127.0.0.1", sntp.port).sync()
    NtpClock("127.0.0.1", sntp.port).sync()
    first, second = sntp.requests
    assert len(first) == 48 and first[0] == 0x23  # LI 0, version 4, mode 3 (client)
    assert first[1:40] == bytes(39)
    cookies = [struct.unpack_from("!Q", r, 40)[0] for r in (first, second)]
    assert cookies[0] != cookies[1]
    now = ntp_timestamp(time.time_ns())
    assert all(abs((c >> 32) - (now >> 32)) > 60 for c in cookies)  # random, not our time


def test_reading_the_clock_never_touches_the_network(sntp: SntpServer) -> None:
    sntp.offset_ns = HOUR
    clock = NtpClock("127.0.0.1", sntp.port)
    assert not clock.synced and clock.offset_ns == 0 and clock.delay_ns is None
    before, now, after = time.time_ns(), clock.now_ns(), time.time_ns()
    assert before <= now <= after  # the local clock before a sync
    clock.sync()
    for _ in range(1000):
        clock.now_ns()
        clock.now_ms()
        clock.monotonic()
    assert len(sntp.requests) == 1


def test_the_offset_is_applied_to_the_base_clock(sntp: SntpServer) -> None:
    sntp.offset_ns = HOUR
    base = FakeClock()
    clock = NtpClock("127.0.0.1", sntp.port, base=base)
    before = time.time_ns()
    clock.sync()
    after = time.time_ns()
    # the base clock stands still: the clock reads the server's time at the sync
    assert before + HOUR - within(clock) <= clock.now_ns() <= after + HOUR + within(clock)
    before, mono = clock.now_ns(), clock.monotonic()
    base.advance(2.5)
    assert clock.now_ns() - before == 2_500_000_000
    assert clock.monotonic() - mono == 2.5


def test_a_resync_replaces_the_offset(sntp: SntpServer) -> None:
    clock = NtpClock("127.0.0.1", sntp.port)
    sntp.offset_ns = HOUR
    clock.sync()
    assert_offset(clock, HOUR)
    sntp.offset_ns = -HOUR
    clock.sync()
    assert_offset(clock, -HOUR)


def test_a_failed_resync_keeps_the_previous_offset(sntp: SntpServer) -> None:
    sntp.offset_ns = HOUR
    clock = NtpClock("127.0.0.1", sntp.port, attempts=1)
    clock.sync()
    offset = clock.offset_ns
    sntp.mode, clock.timeout = "silent", 0.05
    with pytest.raises(ClockSyncError):
        clock.sync()
    assert clock.offset_ns == offset


def test_a_silent_server_times_out(sntp: SntpServer) -> None:
    sntp.mode = "silent"
    clock = NtpClock("127.0.0.1", sntp.port, timeout=0.1, attempts=2)
    started = time.monotonic()
    with pytest.raises(ClockSyncError, match=r"127\.0\.0\.1:\d+: no answer within 0\.1 s"):
        clock.sync()
    assert time.monotonic() - started < 3.0
    assert sntp.wait_for(2) == 2
    assert not clock.synced and clock.offset_ns == 0


@pytest.mark.parametrize("noise", ["short", "wrong-origin"])
def test_datagrams_that_do_not_answer_the_request_are_ignored(sntp: SntpServer, noise: str) -> None:
    sntp.offset_ns, sntp.noise = HOUR, noise
    clock = NtpClock("127.0.0.1", sntp.port, attempts=1)
    clock.sync()
    assert_offset(clock, HOUR)


def test_only_datagrams_that_do_not_answer_the_request_time_out(sntp: SntpServer) -> None:
    sntp.noise, sntp.mode = "wrong-origin", "silent"
    clock = NtpClock("127.0.0.1", sntp.port, timeout=0.1, attempts=1)
    with pytest.raises(ClockSyncError, match=r"no answer within 0\.1 s"):
        clock.sync()
    assert not clock.synced


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("alarm", "the server's own clock is not synchronised"),
        ("stratum16", "the server's own clock is not synchronised"),
        ("client-mode", r"not a server's \(mode 3\)"),
        ("version2", "NTP version 2"),
        ("no-time", "carries no time"),
        ("backwards", "answered before it received"),
    ],
)
def test_unusable_answers_raise(sntp: SntpServer, mode: str, message: str) -> None:
    sntp.mode = mode
    clock = NtpClock("127.0.0.1", sntp.port, timeout=0.5, attempts=2)
    with pytest.raises(ClockSyncError, match=message):
        clock.sync()
    assert len(sntp.requests) == 2
    assert not clock.synced


def test_a_kiss_of_death_is_not_asked_again(sntp: SntpServer) -> None:
    sntp.mode = "kiss"
    clock = NtpClock("127.0.0.1", sntp.port, timeout=0.5, attempts=3)
    with pytest.raises(ClockSyncError, match="kiss-o'-death 'RATE'"):
        clock.sync()
    assert len(sntp.requests) == 1


def test_an_unreachable_server_raises() -> None:
    clock = NtpClock("127.0.0.1", closed_udp_port(), timeout=1.0, attempts=2)
    with pytest.raises(ClockSyncError, match=r"cannot synchronise .* unreachable"):
        clock.sync()


def test_the_pool_is_resolved_and_its_servers_tried_in_turn(sntp: SntpServer) -> None:
    sntp.offset_ns = HOUR
    # nothing listens on 127.0.0.2 (all of 127/8 is the loopback): the first server is refused
    resolver = MemoryResolver({"pool.test": ["127.0.0.2", "127.0.0.1"]})
    clock = NtpClock("pool.test", sntp.port, resolver)
    clock.sync()
    assert_offset(clock, HOUR)
    assert resolver.queries == ["pool.test"]
    assert len(sntp.requests) == 1


def test_a_pool_that_does_not_resolve_raises() -> None:
    clock = NtpClock("pool.test", 123, MemoryResolver())
    with pytest.raises(ClockSyncError, match=r"cannot find the NTP server pool\.test:123"):
        clock.sync()


# --- timestamps --------------------------------------------------------------------------------
ROLLOVER_NS = (2**32 - NTP_UNIX_DELTA) * NS  # 2036-02-07 06:28:16 UTC


@pytest.mark.parametrize(
    "unix_ns",
    [0, 1_700_000_000_123_456_789, ROLLOVER_NS - 1, ROLLOVER_NS, ROLLOVER_NS + 7 * NS // 3],
)
def test_ntp_timestamps_round_trip(unix_ns: int) -> None:
    assert to_ntp(unix_ns) == ntp_timestamp(unix_ns)
    for near in (unix_ns, unix_ns - 60 * YEAR, unix_ns + 60 * YEAR):
        assert abs(from_ntp(to_ntp(unix_ns), near) - unix_ns) <= 1


def test_the_era_nearest_the_local_clock_is_chosen() -> None:
    stamp = to_ntp(ROLLOVER_NS + NS)  # one second into era 1: the seconds field is 1
    assert stamp >> 32 == 1
    assert from_ntp(stamp, ROLLOVER_NS - HOUR) == ROLLOVER_NS + NS
    # 1970 is nearer 2036 than 1900; a local clock in 1936 puts it in 1900
    assert from_ntp(stamp, 0) == ROLLOVER_NS + NS
    assert from_ntp(stamp, ROLLOVER_NS - 100 * YEAR) == ROLLOVER_NS + NS - 2**32 * NS


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(("no_ntp", "pool"), [(True, "127.0.0.1"), (False, None), (True, None)])
def test_make_clock_gives_the_system_clock_without_ntp(
    sntp: SntpServer, no_ntp: bool, pool: str | None
) -> None:
    assert type(make_clock(no_ntp, pool, sntp.port)) is SystemClock
    assert sntp.requests == []


def test_make_clock_gives_a_synchronised_ntp_clock(sntp: SntpServer) -> None:
    sntp.offset_ns = -HOUR
    resolver = MemoryResolver({"ntp.test": ["127.0.0.1"]})
    clock = make_clock(False, "ntp.test", sntp.port, resolver)
    assert isinstance(clock, NtpClock)
    assert_offset(clock, -HOUR)


def test_make_clock_falls_back_to_the_system_clock_with_a_warning(
    sntp: SntpServer, caplog: pytest.LogCaptureFixture
) -> None:
    sntp.mode = "silent"
    with caplog.at_level(logging.WARNING, logger="wasmer_dfs.clock"):
        clock = make_clock(False, "127.0.0.1", sntp.port, timeout=0.05)
    assert type(clock) is SystemClock
    assert sntp.wait_for(3) == 3
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot synchronise the clock" in caplog.records[0].getMessage()
    assert "stamped by the local clock" in caplog.records[0].getMessage()


class PortRecorder(MemoryResolver):
    """A ``MemoryResolver`` that also notes the port it was asked for."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        super().__init__(names)
        self.ports: list[int] = []

    def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        self.ports.append(port)
        return super().resolve(host, port)


def test_make_clock_asks_port_123_by_default() -> None:
    resolver: Resolver = PortRecorder({})  # resolving fails, so no datagram is ever sent
    clock = make_clock(False, "ntp.test", None, resolver)
    assert type(clock) is SystemClock
    assert isinstance(resolver, PortRecorder) and resolver.ports == [123]
