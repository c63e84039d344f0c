"""Points in time as users write them and as the history shows them (issue 15): durations
before now (``2h``, ``1d12h``, ``90s``) and UTC times to the millisecond. Pure (no clock, no
``datetime``: the layer contract); ISO 8601 input is read in entrypoints/timetravel.py."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


class TimeSpecError(ValueError):
    """A time that cannot be read (the message says what is expected)."""


def duration_ms(text: str) -> int | None:
    """``2h``, ``1d12h``, ``90s``, ``500ms`` in milliseconds; None when ``text`` is not one."""
    s = text.strip().lower()
    if not s:
        return None
    pos = total = 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            return None
        total += int(float(m.group(1)) * _UNITS_MS[m.group(2)])
        pos = m.end()
    return total if pos == len(s) and pos > 0 else None


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of ``days`` since 1970-01-01 (proleptic Gregorian; H. Hinnant's
    ``civil_from_days``)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def iso_ms(ms: int) -> str:
    """``ms`` since the epoch as ``2026-12-03T13:50:01.123Z`` (UTC, milliseconds)."""
    days, rest = divmod(ms, 86_400_000)
    y, mo, d = _civil(days)
    sec, milli = divmod(rest, 1000)
    h, sec = divmod(sec, 3600)
    mi, sec = divmod(sec, 60)
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}.{milli:03d}Z"
