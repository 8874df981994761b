"""ScheduleSpec: a cron expression or an interval that runs a lifecycle deployment (with that action's
spec as its parameters) or, later, a pipeline, with a window, catch-up and a concurrency limit.
Pure pydantic: a bad schedule fails here, naming the field, before anything is saved (the cron
expression itself is read by mlyard.schedules.cron when the schedule is created: the vocabulary imports no
package above it).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.names import current_deployment
from mlyard.core.specs.common import NAME_PATTERN, SpecModel

# The console's statuses of a schedule; ENABLED(EXPIRED) is ENABLED past its end time.
SCHEDULE_STATUSES = ("CREATE REQUESTED", "CREATE FAILED", "ENABLED", "ENABLED(EXPIRED)", "DISABLED")
MAX_CONCURRENCY = 10  # as Kubeflow Pipelines allows
UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}


class Interval(SpecModel):
    """Every N units, counted from the schedule's start time (or its creation)."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(ge=1, le=1_000_000, description="How many units between runs.")
    unit: Literal["seconds", "minutes", "hours", "days", "weeks"] = Field(default="minutes",
                                                                         description="The unit of `every`.")

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.every * UNIT_SECONDS[self.unit])


class ScheduleSpec(SpecModel):
    """A schedule: what it runs, when, and what happens when runs pile up or were missed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique name: lowercase letters, digits and '-', 1-50.")
    description: str = Field(default="", max_length=255, description="What the schedule is for.")
    deployment: str | None = Field(
        default=None, pattern=r"^[\w.-]+/[\w.-]+$",
        description="The Prefect deployment it runs, as flow/deployment (train/train-local, evaluate/evaluate-gpu, ...).")
    pipeline: str | None = Field(default=None, description="An uploaded pipeline it runs (instead of a deployment).")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="The run's parameters: for a lifecycle deployment {spec: {...}} with that action's spec; "
                    "for a pipeline its run parameters. Text may hold {{ slot_time }} (ISO-8601, UTC), "
                    "{{ slot_date }}, {{ slot_epoch }} and {{ slot_name }} (20261201t020000z): a catch-up run then works on "
                    "its own period.")
    cron: str | None = Field(
        default=None,
        description="A cron expression as Kubeflow reads it: six fields, seconds first ('0 0 2 * * *'), "
                    "descriptors (@hourly, @every 1h30m) and CRON_TZ=Zone prefixes; `mlyard schedules preview`.")
    interval: Interval | None = Field(default=None, description="Or every N seconds|minutes|hours|days|weeks.")
    timezone: str = Field(default="UTC", description="The zone a cron expression's wall clock is read in "
                                                     "(an IANA name; a CRON_TZ= prefix overrides it).")
    start_time: datetime | None = Field(default=None, description="Slots strictly after this instant, as Kubeflow's "
                                                                  "scheduled workflows count (an interval's first slot "
                                                                  "is start_time + interval); ISO-8601; default: from "
                                                                  "creation.")
    end_time: datetime | None = Field(default=None, description="No run after this instant; past it the schedule "
                                                                "shows ENABLED(EXPIRED).")
    max_concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY,
                                 description="At most this many of its runs at once (1-10).")
    when_busy: Literal["wait", "skip"] = Field(
        default="wait", description="A slot due while max_concurrency runs are going: wait for one to end, or skip "
                                    "it (recorded as SKIPPED).")
    catchup: bool = Field(default=True, description="After downtime or a disable, run every missed slot oldest "
                                                    "first (on), or only the latest one (off).")
    catchup_max_slots: int | None = Field(default=None, ge=1, description="Catch up at most the latest N missed "
                                                                          "slots (older ones are recorded as MISSED).")
    catchup_max_age_seconds: int | None = Field(default=None, ge=1,
                                                description="Catch up only slots at most this old.")
    enabled: bool = Field(default=True, description="Start enabled (ENABLED) or not (DISABLED).")

    @field_validator("deployment")
    @classmethod
    def _deployment_named_now(cls, value: str | None) -> str | None:
        return value if value is None else current_deployment(value)  # `train/local` as named before: train-local

    @field_validator("start_time", "end_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)  # a time without an offset is UTC
        # slots fall on whole seconds: a fraction would make an interval's first slot start_time itself
        return v.replace(microsecond=0) if v is not None else v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if v.upper() != "UTC":
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}: use an IANA name such as 'UTC' or 'Asia/Seoul'") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ScheduleSpec":
        if (self.deployment is None) == (self.pipeline is None):
            raise ValueError("give exactly one of deployment (flow/deployment) or pipeline")
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one trigger: cron or interval")
        if self.start_time and self.end_time and self.end_time <= self.start_time:
            raise ValueError(f"end_time ({self.end_time.isoformat()}) must be after start_time "
                             f"({self.start_time.isoformat()})")
        return self
