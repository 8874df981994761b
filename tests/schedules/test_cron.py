"""mlyard.schedules.cron against robfig/cron's own test table (spec_test.go, v3) and its parser's refusals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from mlyard.schedules import cron

NY = ZoneInfo("America/New_York")


def when(text: str) -> datetime:
    for fmt in ("%a %b %d %H:%M %Y", "%a %b %d %H:%M:%S %Y"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").astimezone(NY)


# robfig's TestActivation: (time, spec, fires at that time?). Its 5-field specs are v1's seconds-first
# form with the weekday left out; written here with the weekday added, as v3 with seconds needs.
ACTIVATION = [
    ("Mon Jul 9 15:00 2012", "0 0/15 * * * *", True), ("Mon Jul 9 15:45 2012", "0 0/15 * * * *", True),
    ("Mon Jul 9 15:40 2012", "0 0/15 * * * *", False), ("Mon Jul 9 15:05 2012", "0 5/15 * * * *", True),
    ("Mon Jul 9 15:20 2012", "0 5/15 * * * *", True), ("Mon Jul 9 15:50 2012", "0 5/15 * * * *", True),
    ("Sun Jul 15 15:00 2012", "0 0/15 * * Jul *", True), ("Sun Jul 15 15:00 2012", "0 0/15 * * Jun *", False),
    ("Sun Jul 15 08:30 2012", "0 30 08 ? Jul Sun", True), ("Sun Jul 15 08:30 2012", "0 30 08 15 Jul ?", True),
    ("Mon Jul 16 08:30 2012", "0 30 08 ? Jul Sun", False), ("Mon Jul 16 08:30 2012", "0 30 08 15 Jul ?", False),
    ("Mon Jul 9 15:00 2012", "@hourly", True), ("Mon Jul 9 15:04 2012", "@hourly", False),
    ("Mon Jul 9 15:00 2012", "@daily", False), ("Mon Jul 9 00:00 2012", "@daily", True),
    ("Mon Jul 9 00:00 2012", "@weekly", False), ("Sun Jul 8 00:00 2012", "@weekly", True),
    ("Sun Jul 8 01:00 2012", "@weekly", False), ("Sun Jul 8 00:00 2012", "@monthly", False),
    ("Sun Jul 1 00:00 2012", "@monthly", True),
    # both days restricted: either matches
    ("Sun Jul 15 00:00 2012", "0 * * 1,15 * Sun", True), ("Fri Jun 15 00:00 2012", "0 * * 1,15 * Sun", True),
    ("Wed Aug 1 00:00 2012", "0 * * 1,15 * Sun", True), ("Sun Jul 15 00:00 2012", "0 * * */10 * Sun", True),
    # one is a star: both must match
    ("Sun Jul 15 00:00 2012", "0 * * * * Mon", False), ("Mon Jul 9 00:00 2012", "0 * * 1,15 * *", False),
    ("Sun Jul 15 00:00 2012", "0 * * 1,15 * *", True), ("Sun Jul 15 00:00 2012", "0 * * */2 * Sun", True),
]

NEXT = [
    ("Mon Jul 9 14:45 2012", "0 0/15 * * * *", "Mon Jul 9 15:00 2012"),
    ("Mon Jul 9 14:59 2012", "0 0/15 * * * *", "Mon Jul 9 15:00 2012"),
    ("Mon Jul 9 14:59:59 2012", "0 0/15 * * * *", "Mon Jul 9 15:00 2012"),
    ("Mon Jul 9 15:45 2012", "0 20-35/15 * * * *", "Mon Jul 9 16:20 2012"),
    ("Mon Jul 9 23:46 2012", "0 */15 * * * *", "Tue Jul 10 00:00 2012"),
    ("Mon Jul 9 23:45 2012", "0 20-35/15 * * * *", "Tue Jul 10 00:20 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 * * * *", "Tue Jul 10 00:20:15 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 1/2 * * *", "Tue Jul 10 01:20:15 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 10-12 * * *", "Tue Jul 10 10:20:15 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 1/2 */2 * *", "Thu Jul 11 01:20:15 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 * 9-20 * *", "Wed Jul 10 00:20:15 2012"),
    ("Mon Jul 9 23:35:51 2012", "15/35 20-35/15 * 9-20 Jul *", "Wed Jul 10 00:20:15 2012"),
    ("Mon Jul 9 23:35 2012", "0 0 0 9 Apr-Oct ?", "Thu Aug 9 00:00 2012"),
    ("Mon Jul 9 23:35 2012", "0 0 0 */5 Apr,Aug,Oct Mon", "Tue Aug 1 00:00 2012"),
    ("Mon Jul 9 23:35 2012", "0 0 0 */5 Oct Mon", "Mon Oct 1 00:00 2012"),
    ("Mon Jul 9 23:35 2012", "0 0 0 * Feb Mon", "Mon Feb 4 00:00 2013"),
    ("Mon Jul 9 23:35 2012", "0 0 0 * Feb Mon/2", "Fri Feb 1 00:00 2013"),
    ("Mon Dec 31 23:59:45 2012", "0 * * * * *", "Tue Jan 1 00:00:00 2013"),
    ("Mon Jul 9 23:35 2012", "0 0 0 29 Feb ?", "Mon Feb 29 00:00 2016"),
    # DST, America/New_York: 2am EST -> 3am EDT
    ("2012-03-11T00:00:00-0500", "TZ=America/New_York 0 30 2 11 Mar ?", "2013-03-11T02:30:00-0400"),
    ("2012-03-11T00:00:00-0500", "TZ=America/New_York 0 0 * * * ?", "2012-03-11T01:00:00-0500"),
    ("2012-03-11T01:00:00-0500", "TZ=America/New_York 0 0 * * * ?", "2012-03-11T03:00:00-0400"),
    ("2012-03-11T03:00:00-0400", "TZ=America/New_York 0 0 * * * ?", "2012-03-11T04:00:00-0400"),
    ("2012-03-11T04:00:00-0400", "TZ=America/New_York 0 0 * * * ?", "2012-03-11T05:00:00-0400"),
    ("2012-03-11T00:00:00-0500", "TZ=America/New_York 0 0 1 * * ?", "2012-03-11T01:00:00-0500"),
    ("2012-03-11T01:00:00-0500", "TZ=America/New_York 0 0 1 * * ?", "2012-03-12T01:00:00-0400"),
    ("2012-03-11T00:00:00-0500", "TZ=America/New_York 0 0 2 * * ?", "2012-03-12T02:00:00-0400"),
    # 2am EDT -> 1am EST
    ("2012-11-04T00:00:00-0400", "TZ=America/New_York 0 30 2 04 Nov ?", "2012-11-04T02:30:00-0500"),
    ("2012-11-04T01:45:00-0400", "TZ=America/New_York 0 30 1 04 Nov ?", "2012-11-04T01:30:00-0500"),
    ("2012-11-04T00:00:00-0400", "TZ=America/New_York 0 0 * * * ?", "2012-11-04T01:00:00-0400"),
    ("2012-11-04T01:00:00-0400", "TZ=America/New_York 0 0 * * * ?", "2012-11-04T01:00:00-0500"),
    ("2012-11-04T01:00:00-0500", "TZ=America/New_York 0 0 * * * ?", "2012-11-04T02:00:00-0500"),
    ("2012-11-04T00:00:00-0400", "TZ=America/New_York 0 0 1 * * ?", "2012-11-04T01:00:00-0400"),
    ("2012-11-04T01:00:00-0400", "TZ=America/New_York 0 0 1 * * ?", "2012-11-04T01:00:00-0500"),  # twice
    ("2012-11-04T01:00:00-0500", "TZ=America/New_York 0 0 1 * * ?", "2012-11-05T01:00:00-0500"),
    ("2012-11-04T00:00:00-0400", "TZ=America/New_York 0 0 2 * * ?", "2012-11-04T02:00:00-0500"),
    ("2012-11-04T02:00:00-0500", "TZ=America/New_York 0 0 2 * * ?", "2012-11-05T02:00:00-0500"),
    ("2012-11-04T00:00:00-0400", "TZ=America/New_York 0 0 3 * * ?", "2012-11-04T03:00:00-0500"),
    ("2012-11-04T03:00:00-0500", "TZ=America/New_York 0 0 3 * * ?", "2012-11-05T03:00:00-0500"),
    # the same with the zone given, not prefixed
    ("2012-03-11T01:00:00-0500", "CRON_TZ=America/New_York 0 0 * * * ?", "2012-03-11T03:00:00-0400"),
]


@pytest.mark.parametrize("time,spec,fires", ACTIVATION)
def test_activation(time, spec, fires):
    t = when(time)
    assert (cron.parse(spec).next_after(t - timedelta(seconds=1)) == t) is fires


@pytest.mark.parametrize("time,spec,expected", NEXT)
def test_next(time, spec, expected):
    got = cron.parse(spec).next_after(when(time))
    want = when(expected)
    assert got is not None and got.timestamp() == want.timestamp(), (got, want)


@pytest.mark.parametrize("spec", ["0 0 0 30 Feb ?", "0 0 0 31 Apr ?"])
def test_never_fires(spec):
    assert cron.parse(spec).next_after(when("Mon Jul 9 23:35 2012")) is None
    assert cron.parse(" ".join(spec.split()[1:-1]) + " *").next_after(when("Mon Jul 9 23:35 2012")) is None


@pytest.mark.parametrize("spec,field,words", [
    ("xyz", "", "6 fields"),
    ("60 0 * * * *", "second", "above maximum (59)"),
    ("0 60 * * * *", "minute", "above maximum (59)"),
    ("0 0 * * * XYZ", "day of week", "not a number"),
    ("0 0 24 * * *", "hour", "above maximum (23)"),
    ("0 0 0 0 * *", "day of month", "below minimum (1)"),
    ("0 0 0 * 13 *", "month", "above maximum (12)"),
    ("0 0 0 * * 7", "day of week", "above maximum (6)"),
    ("0 5-2 * * * *", "minute", "beyond end of range"),
    ("0 */0 * * * *", "minute", "positive"),
    ("0 1/2/3 * * * *", "minute", "too many slashes"),
    ("0 1-2-3 * * * *", "minute", "too many hyphens"),
    ("0 -1 * * * *", "minute", "negative"),
    ("0 0 0 L * *", "day of month", "not a number"),
    ("0 0 0 * * 1#2", "day of week", "not a number"),
    ("0 0 * * * * *", "", "found 7"),
    ("@fortnightly", "descriptor", "unrecognized"),
    ("@every 5x", "@every", "unit"),
    ("TZ=Mars/Olympus 0 0 * * * *", "time zone", "unknown time zone"),
    ("", "", "empty"),
])
def test_refused(spec, field, words):
    with pytest.raises(cron.CronError) as err:
        cron.parse(spec)
    assert err.value.field == field and words in str(err.value)


def test_every_counts_from_its_anchor():
    anchor = datetime(2026, 1, 1, tzinfo=timezone.utc)
    s = cron.parse("@every 1h30m", anchor=anchor)
    times = list(cron.fire_times(s, anchor + timedelta(minutes=10), limit=3))
    assert times == [anchor + timedelta(minutes=90 * k) for k in (1, 2, 3)]
    assert cron.parse("@every 500ms").next_after(anchor) == anchor + timedelta(seconds=1)  # at least 1 s


def test_five_fields_only_when_unambiguous():
    # minute hour ... with a weekday name: robfig's old reading (seconds first) cannot take `mon` as a month
    s = cron.parse("30 9 * * mon")
    assert isinstance(s, cron.StandardCron)
    t = s.next_after(datetime(2026, 11, 23, 12, tzinfo=timezone.utc))  # a Monday, after 09:30
    assert t == datetime(2026, 11, 30, 9, 30, tzinfo=timezone.utc)
    with pytest.raises(cron.CronError, match=r"ambiguous.*'0 \*/5 \* \* \* \*'"):
        cron.parse("*/5 * * * *")


def test_zone_without_prefix_and_iso_offsets():
    s = cron.parse("0 0 9 * * *", tz="Asia/Seoul")
    t = s.next_after(datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert t is not None and t.isoformat() == "2026-11-24T09:00:00+09:00"


def test_ten_thousand_slots_quickly():
    import time
    s = cron.parse("* * * * * *")
    start = time.perf_counter()
    times = list(cron.fire_times(s, datetime(2026, 1, 1, tzinfo=timezone.utc), limit=10_000))
    assert len(set(times)) == 10_000 and times[-1] - times[0] == timedelta(seconds=9_999)
    assert time.perf_counter() - start < 5  # about 0.1 s; generous for a loaded machine
