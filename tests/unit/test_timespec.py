"""``--as-of`` times (domain/timespec.py): durations before now, ISO 8601 with and without an
offset, refusals, and the history's time format."""

from __future__ import annotations

import datetime as dt

import pytest

from domain.timespec import TimeSpecError, duration_ms, iso_ms
from entrypoints.timetravel import parse_as_of

NOW = 1_764_770_000_123  # 2025-12-03T13:53:20.123Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("2h", 7_200_000), ("1d12h", 129_600_000), ("500ms", 500),
     ("1w", 604_800_000), ("1.5h", 5_400_000)],
)  # fmt: skip
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms
    assert parse_as_of(text, NOW, dt.UTC) == NOW - ms


@pytest.mark.parametrize("text", ["", "h", "2", "2x", "2h x", "x2h", "-2h"])
def test_not_durations(text: str) -> None:
    assert duration_ms(text) is None


def test_iso_times_with_and_without_offset() -> None:
    assert parse_as_of("2025-12-03T13:53:20.123Z", NOW, dt.UTC) == NOW
    assert parse_as_of("2025-12-03T14:53:20.123+01:00", NOW, dt.UTC) == NOW
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert parse_as_of("2025-12-03T15:53:20.123", NOW, plus2) == NOW  # local time
    assert iso_ms(NOW) == "2025-12-03T13:53:20.123Z"
    assert parse_as_of(iso_ms(NOW - 1), NOW, dt.UTC) == NOW - 1


@pytest.mark.parametrize("ms", [0, 951_782_400_000, 4_102_444_799_999, 1_709_164_800_001])
def test_iso_ms_agrees_with_datetime(ms: int) -> None:
    want = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert iso_ms(ms) == f"{want}.{ms % 1000:03d}Z"


def test_refusals_say_why() -> None:
    with pytest.raises(TimeSpecError, match="is not a time"):
        parse_as_of("yesterday", NOW, dt.UTC)
    with pytest.raises(TimeSpecError, match="in the future"):
        parse_as_of("2030-01-01T00:00:00Z", NOW, dt.UTC)
