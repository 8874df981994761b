"""Schedules and their slots in the catalog, and their rules, in one place:

- schedule names are unique; a schedule whose runs still go cannot be deleted (the caller first
  refreshes which runs ended, `end`);
- a slot is one row per (schedule, slot time) — the database's uniqueness constraint, not a hope, is
  what makes every slot produce at most one run, whatever crashes and restarts in between;
- recording the due slots and moving the watermark past them is one transaction, so a scheduler
  killed at any moment either recorded a fire time or will find it again.

This module records; the scheduler (tasks/scheduling.py) decides and creates the flow runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mlyard.core.errors import AlreadyExists, Protected, ScheduleNotFound
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Schedule, ScheduleSlot

SLOT_STATES = ("WAITING", "STARTED", "ENDED", "SKIPPED")


@dataclass(frozen=True)
class ScheduleRecord:
    id: int
    name: str
    spec: dict[str, Any]
    deployment_id: str | None
    status: str
    reason: str
    watermark_epoch: int | None
    missed: int
    created_at: Any
    project: str = "default"
    owner: str = ""  # the user whose runs its runs are ("": made before projects, the platform's)


@dataclass(frozen=True)
class SlotRecord:
    id: int
    schedule_id: int
    slot_epoch: int
    state: str
    flow_run_id: str | None
    due_at: float
    started_at: float | None


def _record(row: Schedule) -> ScheduleRecord:
    return ScheduleRecord(row.id, row.name, dict(row.spec), row.deployment_id, row.status, row.reason,
                          row.watermark_epoch, row.missed, row.created_at, row.project or "default", row.owner or "")


def _slot(row: ScheduleSlot) -> SlotRecord:
    return SlotRecord(row.id, row.schedule_id, row.slot_epoch, row.state, row.flow_run_id, row.due_at, row.started_at)


class Schedules:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- schedules ---------------------------------------------------------------------------------

    def create(self, name: str, spec: dict[str, Any], deployment_id: str | None, status: str,
               watermark_epoch: int | None, project: str = "default", owner: str = "") -> ScheduleRecord:
        with self.catalog.session() as s:
            if s.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
                raise AlreadyExists("schedule", name)
            row = Schedule(name=name, spec=spec, deployment_id=deployment_id, status=status,
                           watermark_epoch=watermark_epoch, project=project, owner=owner)
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, name: str) -> ScheduleRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(name)
            return _record(row)

    def enabled(self, schedule_id: int) -> bool:
        """Whether the schedule is enabled now (the scheduler asks before each run it creates: a pass
        reads the schedules at its start, and a disable may come in while it runs)."""
        with self.catalog.session() as s:
            return s.scalar(select(Schedule.status).where(Schedule.id == schedule_id)) == "ENABLED"

    def all(self, projects: list[str] | None = None) -> list[ScheduleRecord]:
        """Every schedule, or those of `projects`."""
        q = select(Schedule).order_by(Schedule.id)
        if projects is not None:
            q = q.where(Schedule.project.in_(projects))
        with self.catalog.session() as s:
            return [_record(r) for r in s.scalars(q)]

    def set_status(self, name: str, status: str, reason: str = "", *, watermark_epoch: int | None = None,
                   keep_watermark: bool = True) -> ScheduleRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(name)
            row.status, row.reason = status, reason
            if not keep_watermark:
                row.watermark_epoch = watermark_epoch
            return _record(row)

    def repoint(self, name: str, deployment: str, deployment_id: str) -> ScheduleRecord:
        """The schedule's deployment as it is named and registered now (an older mlyard named them
        `train/local`: `train/train-local` now, a new deployment of its own)."""
        with self.catalog.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(name)
            row.spec = {**row.spec, "deployment": deployment}
            row.deployment_id = deployment_id
            return _record(row)

    def delete(self, name: str) -> None:
        """Delete a schedule and its slot records; refused while one of its runs has not ended."""
        with self.catalog.session() as s:
            row = s.scalar(select(Schedule).where(Schedule.name == name))
            if row is None:
                raise ScheduleNotFound(name)
            going = [str(i) for i in s.scalars(select(ScheduleSlot.flow_run_id).where(
                ScheduleSlot.schedule_id == row.id, ScheduleSlot.state == "STARTED"))]
            if going:
                raise Protected(f"schedule {name!r} has {len(going)} run(s) still going ({', '.join(going[:3])}"
                                f"{', ...' if len(going) > 3 else ''}); wait for them to end, or stop them, then "
                                "delete it")
            s.delete(row)

    # -- slots -------------------------------------------------------------------------------------

    def record_due(self, schedule_id: int, epochs: Sequence[int], watermark_epoch: int, missed: int = 0,
                   state: str = "WAITING") -> int:
        """Record due slots (those already recorded are left as they are) and move the watermark, in one
        transaction; the number of new slots."""
        now = time.time()
        with self.catalog.session() as s:
            added = 0
            if epochs:
                dialect = s.get_bind().dialect.name
                ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(ScheduleSlot)
                rows = [{"schedule_id": schedule_id, "slot_epoch": e, "state": state, "due_at": now} for e in epochs]
                for i in range(0, len(rows), 5000):
                    res = s.connection().execute(ins.on_conflict_do_nothing(index_elements=["schedule_id", "slot_epoch"]),
                                    rows[i:i + 5000])
                    added += max(res.rowcount, 0)
            s.execute(update(Schedule).where(Schedule.id == schedule_id).values(
                watermark_epoch=watermark_epoch, missed=Schedule.missed + missed))
            return added

    def slots(self, schedule_id: int, states: Iterable[str] | None = None, limit: int | None = None,
              newest_first: bool = False) -> list[SlotRecord]:
        with self.catalog.session() as s:
            q = select(ScheduleSlot).where(ScheduleSlot.schedule_id == schedule_id)
            if states is not None:
                q = q.where(ScheduleSlot.state.in_(list(states)))
            q = q.order_by(ScheduleSlot.slot_epoch.desc() if newest_first else ScheduleSlot.slot_epoch)
            if limit is not None:
                q = q.limit(limit)
            return [_slot(r) for r in s.scalars(q)]

    def slots_in(self, states: Iterable[str]) -> list[SlotRecord]:
        """The slots of every schedule in these states, oldest first."""
        with self.catalog.session() as s:
            q = select(ScheduleSlot).where(ScheduleSlot.state.in_(list(states))).order_by(ScheduleSlot.slot_epoch)
            return [_slot(r) for r in s.scalars(q)]

    def counts(self, schedule_id: int) -> dict[str, int]:
        with self.catalog.session() as s:
            rows = s.execute(select(ScheduleSlot.state, func.count()).where(ScheduleSlot.schedule_id == schedule_id)
                             .group_by(ScheduleSlot.state)).all()
        return {state: n for state, n in rows}

    def started(self, slot_id: int, flow_run_id: str) -> None:
        with self.catalog.session() as s:
            s.execute(update(ScheduleSlot).where(ScheduleSlot.id == slot_id).values(
                state="STARTED", flow_run_id=flow_run_id, started_at=time.time()))

    def forget_after(self, schedule_id: int, epoch: int) -> None:
        """Forget the slots after `epoch` that have no run, and bring the watermark back to `epoch`."""
        with self.catalog.session() as s:
            s.execute(delete(ScheduleSlot).where(ScheduleSlot.schedule_id == schedule_id,
                                                 ScheduleSlot.slot_epoch > epoch, ScheduleSlot.state == "WAITING"))
            s.execute(update(Schedule).where(Schedule.id == schedule_id, Schedule.watermark_epoch > epoch)
                      .values(watermark_epoch=epoch))

    def forget(self, slot_ids: Sequence[int]) -> None:
        """Remove these slots: recorded again when due, they follow the schedule's catch-up as new ones."""
        if slot_ids:
            with self.catalog.session() as s:
                s.execute(delete(ScheduleSlot).where(ScheduleSlot.id.in_(list(slot_ids))))

    def mark(self, slot_ids: Sequence[int], state: str) -> None:
        if slot_ids:
            with self.catalog.session() as s:
                s.execute(update(ScheduleSlot).where(ScheduleSlot.id.in_(list(slot_ids))).values(state=state))
