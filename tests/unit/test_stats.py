"""The operation counters of a mount (application/stats.py)."""

from __future__ import annotations

from application.stats import LATENCY_BUCKETS, Access, OperationStats


def test_calls_errors_seconds_and_bytes_add_up() -> None:
    stats = OperationStats()
    stats.record("read", 0.002)
    stats.record("read", 0.004, 5)
    stats.record("lookup", 0.000_01, 2)
    stats.read(4096)
    stats.written(10)
    snap = stats.snapshot()
    assert snap["operations"] == 3 and snap["errors"] == 2
    assert snap["bytes_read"] == 4096 and snap["bytes_written"] == 10
    ops = snap["ops"]
    assert isinstance(ops, dict)
    assert ops["read"]["calls"] == 2 and ops["read"]["errors"] == 1
    assert abs(ops["read"]["seconds"] - 0.006) < 1e-9
    assert list(ops) == ["lookup", "read"]


def test_the_histogram_is_cumulative_and_ends_with_every_call() -> None:
    stats = OperationStats()
    for seconds in (0.000_01, 0.001, 0.001, 0.3, 60.0):
        stats.record("write", seconds)
    hist = stats.snapshot()["ops"]["write"]["histogram"]  # type: ignore[index]
    assert list(hist) == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert hist[repr(0.000_05)] == 1
    assert hist[repr(0.001)] == 3  # a call of exactly a bound falls in that bucket
    assert hist["0.5"] == 4
    assert hist["10.0"] == 4 and hist["+Inf"] == 5
    values = list(hist.values())
    assert values == sorted(values)


def test_the_access_feed_reaches_listeners_only_while_they_listen() -> None:
    stats = OperationStats()
    assert not stats.listening
    seen: list[Access] = []
    stop = stats.listen(seen.append)
    assert stats.listening
    stats.record("mkdir", 0.01, 17, at=123.0, detail="1 docs")
    stop()
    stop()  # stopping twice is harmless
    stats.record("mkdir", 0.01)
    assert seen == [Access(123.0, "mkdir", 0.01, 17, "1 docs")]
    assert not stats.listening
