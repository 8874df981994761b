"""Cron expressions as robfig/cron v3 reads them (the parser Kubeflow Pipelines uses), and the
standard 5-field form where it cannot be mistaken for that one.

robfig's form has six fields with the seconds first:

    second minute hour day-of-month month day-of-week      e.g. "0 30 9 * * mon-fri"

- each field is a comma-separated list of `*`, `?` (the same as `*`), `N`, `N-M`, each with an
  optional `/STEP`; `N/STEP` means `N-max/STEP`; months and weekdays take names (`jan`, `sun`);
- days match when both the day of month and the day of week match if either field is `*` or `?`
  (a stepped star such as `*/2` is not a star), else when either matches;
- descriptors: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`,
  and `@every DURATION` in Go's syntax (`1h30m`, `90s`; at least one second);
- a `CRON_TZ=Zone` or `TZ=Zone` prefix sets the time zone, else the schedule's own zone applies;
- fire times follow Go's wall-clock arithmetic: a time that a DST jump skips does not fire that day,
  and a time that the fall back repeats fires at both of its instants (robfig's own behaviour).

Why not croniter: it reads the seconds last or as an optional extra, accepts `L`, `W`, `#` and
Jenkins' `H` that robfig refuses, and resolves the skipped and repeated DST hours differently; the
fire times must be the ones a Kubeflow user gets, so this module walks robfig's algorithm (tested
against robfig's own test table). croniter still reads the standard 5-field form, which it is made for.

Pure: no I/O, no Prefect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Iterator

from croniter import CroniterBadDateError, croniter

from mlyard.core.errors import CronError
from mlyard.schedules.gotime import add_seconds, go_date, parse_duration, zone

__all__ = ["CronError", "CronSchedule", "EverySchedule", "Schedule", "parse", "parse_duration", "zone"]

STAR = 1 << 63
MONTH_NAMES = {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
DOW_NAMES = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
# name, min, max, names
FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
          ("day of month", 1, 31, None), ("month", 1, 12, MONTH_NAMES), ("day of week", 0, 6, DOW_NAMES))
DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}
YEAR_LIMIT = 5  # robfig gives up after five years without a match




@dataclass(frozen=True)
class CronSchedule:
    """A robfig spec: one bit set per field, and the zone its wall clock is read in."""

    expression: str
    second: int
    minute: int
    hour: int
    dom: int
    month: int
    dow: int
    tz: tzinfo = timezone.utc
    reading: str = ""  # how the expression was read, for people

    def _day_matches(self, t: datetime) -> bool:
        dom_ok = bool(1 << t.day & self.dom)
        dow_ok = bool(1 << ((t.weekday() + 1) % 7) & self.dow)
        if self.dom & STAR or self.dow & STAR:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after `after` (aware), or None within five years: robfig's
        `SpecSchedule.Next`, step for step."""
        loc = self.tz
        t = add_seconds(after.astimezone(loc), 1 - after.microsecond / 1e6)
        added = False
        year_limit = t.year + YEAR_LIMIT
        while True:  # WRAP
            if t.year > year_limit:
                return None
            wrapped = False
            while not (1 << t.month & self.month):
                if not added:
                    added = True
                    t = go_date(t.year, t.month, 1, 0, 0, 0, loc)
                t = go_date(t.year, t.month + 1, t.day, t.hour, t.minute, t.second, loc)
                if t.month == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not self._day_matches(t):
                if not added:
                    added = True
                    t = go_date(t.year, t.month, t.day, 0, 0, 0, loc)
                t = go_date(t.year, t.month, t.day + 1, t.hour, t.minute, t.second, loc)
                if t.hour != 0:  # midnight did not exist (DST): back to the day's start
                    t = add_seconds(t, 3600 * (24 - t.hour)) if t.hour > 12 else add_seconds(t, -3600 * t.hour)
                if t.day == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << t.hour & self.hour):
                if not added:
                    added = True
                    t = go_date(t.year, t.month, t.day, t.hour, 0, 0, loc)
                t = add_seconds(t, 3600)
                if t.hour == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << t.minute & self.minute):
                if not added:
                    added = True
                    t = add_seconds(t, -t.second)
                t = add_seconds(t, 60)
                if t.minute == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not (1 << t.second & self.second):
                added = True
                t = add_seconds(t, 1)
                if t.second == 0:
                    wrapped = True
                    break
            if wrapped:
                continue
            return t


@dataclass(frozen=True)
class EverySchedule:
    """`@every D` (or an interval): fire times at `anchor + k·D`, D rounded down to whole seconds."""

    expression: str
    delay: timedelta
    reading: str = ""
    anchor: datetime | None = field(default=None)

    def next_after(self, after: datetime) -> datetime:
        step = self.delay.total_seconds()
        if self.anchor is None:  # robfig: the delay after the given time, on the second
            return add_seconds(after, self.delay.total_seconds() - after.microsecond / 1e6)
        elapsed = (after - self.anchor).total_seconds()
        k = 0 if elapsed < 0 else int(elapsed // step) + 1
        return add_seconds(self.anchor, k * step)


@dataclass(frozen=True)
class StandardCron:
    """A standard 5-field cron (minute first), read by croniter."""

    expression: str
    tz: tzinfo = timezone.utc
    reading: str = ""

    def next_after(self, after: datetime) -> datetime | None:
        it = croniter(self.expression, after.astimezone(self.tz), ret_type=datetime)
        try:
            nxt = it.get_next(datetime)
        except CroniterBadDateError:  # e.g. 31 February: it never fires
            return None
        return nxt if nxt.year <= after.year + YEAR_LIMIT else None


Schedule = CronSchedule | EverySchedule | StandardCron


def fire_times(schedule: Schedule, after: datetime, until: datetime | None = None,
               limit: int | None = None) -> Iterator[datetime]:
    """Fire times strictly after `after`, up to and including `until`, at most `limit` of them."""
    n, t = 0, after
    while limit is None or n < limit:
        nxt = schedule.next_after(t)
        if nxt is None or (until is not None and nxt.timestamp() > until.timestamp()):
            return
        yield nxt
        n, t = n + 1, nxt


# --- parsing ------------------------------------------------------------------------------------

def _number(expression: str, fname: str, text: str, names: dict[str, int] | None) -> int:
    if names and text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        if text.startswith("-") and text[1:].isdigit():
            raise CronError(expression, f"negative number ({text}) not allowed", fname, text)
        allowed = f" or a name ({', '.join(names)})" if names else ""
        raise CronError(expression, f"{text!r} is not a number{allowed}", fname, text)
    return int(text)


def _field_bits(expression: str, text: str, fname: str, lo: int, hi: int, names: dict[str, int] | None) -> int:
    if text == "":
        raise CronError(expression, "empty field", fname, text)
    bits = 0
    for part in text.split(","):
        if part == "":
            raise CronError(expression, "empty item in a list", fname, text)
        range_step = part.split("/")
        if len(range_step) > 2:
            raise CronError(expression, "too many slashes", fname, part)
        low_high = range_step[0].split("-")
        extra = 0
        if low_high[0] in ("*", "?"):
            if len(low_high) > 1:
                raise CronError(expression, "a range cannot start with '*' or '?'", fname, part)
            start, end, extra = lo, hi, STAR
        else:
            if len(low_high) > 2:
                raise CronError(expression, "too many hyphens", fname, part)
            if "" in low_high:
                raise CronError(expression, "a range needs both ends (negative numbers are not allowed)", fname, part)
            start = _number(expression, fname, low_high[0], names)
            end = _number(expression, fname, low_high[1], names) if len(low_high) == 2 else start
        step = 1
        if len(range_step) == 2:
            step = _number(expression, fname, range_step[1], None)
            if step <= 0:
                raise CronError(expression, "the step must be a positive number", fname, part)
            if len(low_high) == 1:  # N/step means N-max/step
                end = hi
            if step > 1:
                extra = 0  # */2 is not a star
        if start < lo:
            raise CronError(expression, f"beginning of range ({start}) below minimum ({lo})", fname, part)
        if end > hi:
            raise CronError(expression, f"end of range ({end}) above maximum ({hi})", fname, part)
        if start > end:
            raise CronError(expression, f"beginning of range ({start}) beyond end of range ({end})", fname, part)
        for v in range(start, end + 1, step):
            bits |= 1 << v
        bits |= extra
    return bits


def _robfig(expression: str, fields: list[str], tz: tzinfo, reading: str) -> CronSchedule:
    sec, minute, hour, dom, month, dow = (_field_bits(expression, f, *spec) for f, spec in zip(fields, FIELDS))
    return CronSchedule(expression, sec, minute, hour, dom, month, dow, tz=tz, reading=reading)


def _describe(fields: list[str]) -> str:
    return ", ".join(f"{name} {f}" for (name, *_), f in zip(FIELDS, fields))


def parse(expression: str, tz: str | tzinfo = "UTC", anchor: datetime | None = None) -> Schedule:
    """Read an expression; a `CronError` naming the field and the reason when robfig would refuse it.

    `tz` is the zone for expressions without a `CRON_TZ=`/`TZ=` prefix; `anchor` is where `@every`
    counts from (a schedule's start), else each fire time is the delay after the previous one.
    """
    text = expression.strip()
    if not text:
        raise CronError(expression, "empty expression: give six fields (second minute hour day month weekday) "
                                    "or a descriptor such as @hourly")
    zone_ = zone(tz) if isinstance(tz, str) else tz
    zone_note = ""
    if text.startswith(("CRON_TZ=", "TZ=")):
        head, _, text = text.partition(" ")
        name = head.split("=", 1)[1]
        try:
            zone_ = zone(name)
        except ValueError as exc:
            raise CronError(expression, str(exc), "time zone", name) from exc
        text = text.strip()
        zone_note = f" in {name}"
        if not text:
            raise CronError(expression, "nothing after the time zone prefix")
    if text.startswith("@"):
        if text.startswith("@every"):
            arg = text[len("@every"):].strip()
            try:
                delay = parse_duration(arg)
            except ValueError as exc:
                raise CronError(expression, str(exc), "@every", arg) from exc
            delay = timedelta(seconds=int(delay.total_seconds()))
            if delay < timedelta(seconds=1):
                delay = timedelta(seconds=1)  # robfig rounds up to one second
            return EverySchedule(expression, delay, reading=f"every {_human(delay)}", anchor=anchor)
        if text.lower() not in DESCRIPTORS:
            raise CronError(expression, f"unrecognized descriptor; use one of {', '.join(DESCRIPTORS)} or @every D",
                            "descriptor", text)
        fields = DESCRIPTORS[text.lower()].split()
        return _robfig(expression, fields, zone_, f"{text.lower()}: {_describe(fields)}{zone_note}")
    fields = text.split()
    if len(fields) == 6:
        return _robfig(expression, fields, zone_, _describe(fields) + zone_note)
    if len(fields) == 5:
        return _five_fields(expression, fields, zone_, zone_note)
    raise CronError(expression, f"expected exactly 6 fields (second minute hour day-of-month month "
                                f"day-of-week), found {len(fields)}")


def _five_fields(expression: str, fields: list[str], tz: tzinfo, zone_note: str) -> Schedule:
    """Five fields: standard cron (minute first), unless robfig's old 5-field reading (seconds first,
    the weekday left out) would also accept it and fire at other times: then refuse, showing both."""
    std_text = " ".join(fields)
    std_ok = croniter.is_valid(std_text) and not re.search(r"[LW#H]", std_text, re.I)
    try:
        as_robfig: CronSchedule | None = _robfig(expression, fields + ["*"], tz, "")
    except CronError:
        as_robfig = None
    six = "0 " + std_text
    try:
        _robfig(six, six.split(), tz, "")
        hint = f"; did you mean '{six}' (seconds first)?"
    except CronError:
        hint = ""
    if not std_ok:
        raise CronError(expression, "expected exactly 6 fields (second minute hour day-of-month month "
                                    f"day-of-week), found 5, and they are not a valid standard cron either{hint}")
    standard = StandardCron(std_text, tz, reading=f"standard 5-field cron: minute {fields[0]}, hour {fields[1]}, "
                                                   f"day of month {fields[2]}, month {fields[3]}, "
                                                   f"day of week {fields[4]}{zone_note}")
    if as_robfig is not None:
        probe = datetime(2024, 1, 1, tzinfo=timezone.utc)
        ours = list(fire_times(standard, probe, limit=5))
        theirs = list(fire_times(as_robfig, probe, limit=5))
        if ours != theirs:
            raise CronError(expression, "ambiguous: standard cron reads the first field as minutes, Kubeflow's "
                                        "as seconds, and they fire at different times; write 6 fields, seconds "
                                        f"first ('{six}' for the standard meaning)")
    return standard


def _human(delay: timedelta) -> str:
    s = int(delay.total_seconds())
    parts = [(s // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"
