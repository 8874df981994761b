"""mlyard.schedules.planning: which slots are due, catch-up on/off/bounded, dispatch under the limit, templates."""

from __future__ import annotations

from datetime import datetime, timezone

from mlyard.schedules.cron import parse
from mlyard.schedules.planning import Policy, dispatch, due, render, slot_label, trigger

T0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
EVERY_MINUTE = parse("0 * * * * *")


def test_catchup_on_records_every_missed_slot_oldest_first():
    d = due(EVERY_MINUTE, Policy(), T0, T0 + 600)
    assert d.slots == [T0 + 60 * k for k in range(1, 11)] and d.missed == 0 and d.watermark == T0 + 600


def test_catchup_off_records_only_the_latest_and_counts_the_rest():
    d = due(EVERY_MINUTE, Policy(catchup=False), T0, T0 + 600 + 30)
    assert d.slots == [T0 + 600] and d.missed == 9


def test_bounded_catchup_by_slots_and_by_age():
    assert due(EVERY_MINUTE, Policy(max_slots=3), T0, T0 + 600).slots == [T0 + 480, T0 + 540, T0 + 600]
    d = due(EVERY_MINUTE, Policy(max_age_seconds=150), T0, T0 + 600)
    assert d.slots == [T0 + 480, T0 + 540, T0 + 600] and d.missed == 7


def test_window_start_and_end():
    start = datetime.fromtimestamp(T0 + 300, timezone.utc)
    end = datetime.fromtimestamp(T0 + 420, timezone.utc)
    d = due(EVERY_MINUTE, Policy(start=start, end=end), T0, T0 + 600)
    assert d.slots == [T0 + 360, T0 + 420], "strictly after start_time (Kubeflow's rule), up to end_time"
    assert due(EVERY_MINUTE, Policy(start=start, end=end), d.watermark, T0 + 900).slots == []


def test_nothing_twice():
    d1 = due(EVERY_MINUTE, Policy(), T0, T0 + 130)
    d2 = due(EVERY_MINUTE, Policy(), d1.watermark, T0 + 250)
    assert d1.slots == [T0 + 60, T0 + 120] and d2.slots == [T0 + 180, T0 + 240]


def test_latest_of_a_long_downtime_is_found_without_walking_it():
    every_second = parse("* * * * * *")
    d = due(every_second, Policy(catchup=False), T0, T0 + 86400 * 30)
    assert d.slots == [T0 + 86400 * 30]


def test_interval_counts_from_its_anchor():
    anchor = datetime.fromtimestamp(T0 + 7, timezone.utc)
    s = trigger(None, 90, "UTC", anchor)
    assert due(s, Policy(start=anchor), T0, T0 + 200).slots == [T0 + 97, T0 + 187], "start + interval first, as KFP"


def test_dispatch():
    assert dispatch([1, 2, 3], running=1, max_concurrency=2, when_busy="wait") == ([1], [])
    assert dispatch([1, 2, 3], running=1, max_concurrency=2, when_busy="skip") == ([1], [2, 3])
    assert dispatch([1, 2], running=5, max_concurrency=2, when_busy="wait") == ([], [])


def test_render():
    params = {"spec": {"name": "n-{{ slot_date }}", "out": ["s3://b/{{slot_time}}/x"], "k": 3}}
    assert render(params, T0 + 61) == {"spec": {"name": "n-2026-01-01", "out": ["s3://b/2026-01-01T00:01:01Z/x"],
                                                "k": 3}}
    assert slot_label(T0) == "20260101T000000Z"
    assert render("nightly-{{ slot_name }}", T0 + 61) == "nightly-20260101t000101z", "it fits a run's name"


def test_lead_records_the_slots_just_ahead_and_never_counts_them_missed():
    d = due(parse("* * * * * *"), Policy(catchup=False), T0, T0 + 10, lead=3)
    assert d.slots == [T0 + 10, T0 + 11, T0 + 12, T0 + 13] and d.missed == 9 and d.watermark == T0 + 13
    d2 = due(parse("* * * * * *"), Policy(catchup=False), d.watermark, T0 + 11, lead=3)
    assert d2.slots == [T0 + 14] and d2.missed == 0


def test_a_start_time_with_a_fraction_of_a_second_is_not_itself_a_slot():
    """An interval counts from start_time, and slots fall strictly after it: kept to whole seconds, a start
    given as 00:00:00.6 does not make 00:00:00 (its own second) a slot."""
    from mlyard.core.specs.schedule import ScheduleSpec

    spec = ScheduleSpec.model_validate({"name": "s", "deployment": "train/train-local", "interval": {"every": 1, "unit": "hours"},
                                        "start_time": "2026-01-01T00:00:00.600000+00:00", "parameters": {}})
    assert spec.start_time == datetime(2026, 1, 1, tzinfo=timezone.utc)
    trig = trigger(None, 3600, "UTC", spec.start_time)
    assert due(trig, Policy(start=spec.start_time), T0 - 10, T0 + 3600).slots == [T0 + 3600]
