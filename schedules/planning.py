"""What a scheduler does with a schedule, as plain functions: which fire times are due and which the
catch-up policy leaves out, which waiting slots start now and which are skipped, and how a slot's
time reaches its run's parameters.

Times here are aware datetimes or whole epoch seconds (slots are whole seconds: robfig's precision).
Pure: no I/O, no Prefect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence, TypeVar

from mlyard.schedules.cron import EverySchedule, Schedule, fire_times, parse

CAP = 100_000  # at most this many fire times are enumerated in one pass; the rest come on the next one
WINDOWS = (60, 3600, 86400, 31 * 86400, 366 * 86400, 5 * 366 * 86400)  # where the latest slots are looked for


@dataclass(frozen=True)
class Policy:
    """A schedule's window and catch-up rules (from its spec)."""

    start: datetime | None = None
    end: datetime | None = None
    catchup: bool = True
    max_slots: int | None = None  # catch up at most the latest N
    max_age_seconds: int | None = None  # catch up only slots at most this old

    @property
    def keep_latest(self) -> int | None:
        if not self.catchup:
            return 1
        return self.max_slots


@dataclass(frozen=True)
class Due:
    """The slots to record now (oldest first), how many older ones the policy left out, and the new
    watermark: every fire time up to it has been considered."""

    slots: list[int] = field(default_factory=list)
    missed: int = 0
    watermark: int = 0


def trigger(cron: str | None, interval_seconds: int | None, tz: str, anchor: datetime) -> Schedule:
    """The trigger of a schedule: a cron expression (in its zone) or an interval counted from `anchor`."""
    if cron is not None:
        return parse(cron, tz, anchor=anchor)
    assert interval_seconds is not None
    return EverySchedule(f"every {interval_seconds}s", timedelta(seconds=interval_seconds),
                         reading=f"every {interval_seconds} s from {anchor.isoformat()}", anchor=anchor)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _count(schedule: Schedule, after: int, until: int, cap: int = CAP) -> int:
    return sum(1 for _ in fire_times(schedule, _at(after), _at(until), limit=cap))


def _latest(schedule: Schedule, after: int, until: int, n: int) -> list[int]:
    """The latest `n` fire times in (after, until], found in growing windows back from `until`."""
    for w in WINDOWS:
        lo = max(after, until - w)
        found = [_epoch(t) for t in fire_times(schedule, _at(lo), _at(until), limit=CAP)]
        if len(found) >= n or lo == after:
            return found[-n:]
    lo = after
    return [_epoch(t) for t in fire_times(schedule, _at(lo), _at(until), limit=CAP)][-n:]


def due(schedule: Schedule, policy: Policy, watermark: int, now: float, lead: float = 0.0) -> Due:
    """The fire times in (watermark, now] that are due, within the window and the catch-up policy, and
    those in (now, now + lead] (to be created ahead of their time).

    Catch-up on records every missed fire time oldest first (at most CAP in one pass); catch-up off
    records only the latest one, as Kubeflow does; `max_slots` and `max_age_seconds` bound how far
    back a catch-up goes. What the policy leaves out is counted, not recorded slot by slot."""
    past = _due(schedule, policy, watermark, int(now))
    if lead <= 0 or past.watermark < int(now):  # a capped pass: the rest of the past first
        return past
    end = int(now + lead)
    if policy.end is not None:
        end = min(end, _epoch(policy.end))
    ahead = [_epoch(t) for t in fire_times(schedule, _at(past.watermark), _at(end), limit=CAP)] if end > past.watermark \
        else []
    return Due(past.slots + ahead, past.missed, max(past.watermark, end))


def _due(schedule: Schedule, policy: Policy, watermark: int, now: int) -> Due:
    lo = watermark
    if policy.start is not None:  # strictly after start_time, as Kubeflow's scheduled workflows start
        lo = max(lo, _epoch(policy.start))
    hi = now
    if policy.end is not None:
        hi = min(hi, _epoch(policy.end))
    if hi <= lo:
        return Due([], 0, max(watermark, min(now, lo)))
    missed = 0
    if policy.max_age_seconds is not None and hi - policy.max_age_seconds > lo:
        cut = hi - policy.max_age_seconds
        missed += _count(schedule, lo, cut)
        lo = cut
    keep = policy.keep_latest
    if keep is None:
        slots = [_epoch(t) for t in fire_times(schedule, _at(lo), _at(hi), limit=CAP)]
        mark = slots[-1] if len(slots) == CAP else max(hi, now)
        return Due(slots, missed, mark)
    slots = _latest(schedule, lo, hi, keep)
    if slots:
        missed += _count(schedule, lo, slots[0] - 1)
    return Due(slots, missed, max(hi, now))


T = TypeVar("T")


def dispatch(waiting: Sequence[T], running: int, max_concurrency: int, when_busy: str) -> tuple[list[T], list[T]]:
    """Of the waiting slots (oldest first), those that start now and those skipped: as many start as
    the limit leaves room for; the rest wait, or are skipped when `when_busy` is 'skip'."""
    room = max(0, max_concurrency - running)
    start, rest = list(waiting[:room]), list(waiting[room:])
    return start, (rest if when_busy == "skip" else [])


_PLACEHOLDER = re.compile(r"\{\{\s*(slot_time|slot_date|slot_epoch|slot_name)\s*\}\}")


def render(value: Any, slot_epoch: int) -> Any:
    """`value` with {{ slot_time }} (ISO-8601, UTC), {{ slot_date }} (YYYY-MM-DD), {{ slot_epoch }} and
    {{ slot_name }} (the slot's label in lower case, 20261201t020000z: it fits a name) replaced in every
    string, however deep."""
    if isinstance(value, str):
        at = _at(slot_epoch)
        names = {"slot_time": at.isoformat().replace("+00:00", "Z"), "slot_date": at.date().isoformat(),
                 "slot_epoch": str(slot_epoch), "slot_name": slot_label(slot_epoch).lower()}
        return _PLACEHOLDER.sub(lambda m: names[m.group(1)], value)
    if isinstance(value, dict):
        return {k: render(v, slot_epoch) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, slot_epoch) for v in value]
    return value


def slot_label(slot_epoch: int) -> str:
    """A slot as it appears in run names and tags: 20261123T090000Z."""
    return _at(slot_epoch).strftime("%Y%m%dT%H%M%SZ")
