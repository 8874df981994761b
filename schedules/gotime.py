"""Go's time semantics that robfig/cron relies on, for schedules/cron.py: IANA zones by name,
durations in Go's syntax (`@every 1h30m`) and Go's wall-clock arithmetic (`time.Date` and `Add`
across DST jumps). Pure: no I/O.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> tzinfo:
    """A time zone by IANA name ('UTC', 'Asia/Seoul'); a ValueError naming it when unknown."""
    if name.upper() in ("UTC", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Asia/Seoul'") from exc


# --- Go's durations (`@every 1h30m`) -------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """A duration in Go's syntax (`1h30m`, `1.5h`, `90s`); a ValueError saying why otherwise."""
    s = text.strip()
    if not s or s.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: give a positive Go duration such as '1h30m' or '90s'")
    s = s.lstrip("+")
    seconds, pos = 0.0, 0
    if s == "0":
        return timedelta(0)
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}: each number needs a unit (ns, us, ms, s, m, h), e.g. '1h30m'")
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=seconds)


# --- Go's wall-clock arithmetic -----------------------------------------------------------------

def _offset(tz: tzinfo, instant: float) -> float:
    off = datetime.fromtimestamp(instant, tz).utcoffset()
    return off.total_seconds() if off is not None else 0.0


def add_seconds(t: datetime, seconds: float) -> datetime:
    """`t` moved by absolute seconds, read back in its own zone (Go's `Add`; Python's `+` moves the wall clock)."""
    tz = t.tzinfo
    assert tz is not None
    return datetime.fromtimestamp(t.timestamp() + seconds, tz)


def go_date(y: int, mo: int, d: int, h: int, mi: int, s: int, tz: tzinfo) -> datetime:
    """Go's `time.Date`: day and month overflow normalized; a wall time a DST jump skipped, or one
    that occurs twice, resolved the way Go resolves it (the zone in effect at the wall time read as
    UTC, corrected once when the result falls outside it)."""
    y += (mo - 1) // 12
    mo = (mo - 1) % 12 + 1
    day = date(y, mo, 1) + timedelta(days=d - 1)
    naive = datetime(day.year, day.month, day.day) + timedelta(hours=h, minutes=mi, seconds=s)
    wall = naive.replace(tzinfo=timezone.utc).timestamp()
    off = _offset(tz, wall)
    if off:
        other = _offset(tz, wall - off)
        if other != off:
            off = other
    return datetime.fromtimestamp(wall - off, tz)
