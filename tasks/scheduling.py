"""The scheduler: turns schedules' due slots into Prefect flow runs, exactly once each.

One pass (`Scheduler.tick`):
1. confirm new schedules (CREATE REQUESTED -> ENABLED/DISABLED, or CREATE FAILED when their target
   deployment is gone);
2. refresh the slots whose runs were going: a run in a final state (completed, failed, cancelled,
   crashed) or deleted frees its concurrency slot; one no worker took within the start timeout is
   cancelled and frees it too (one whose Job waits on the cluster, for Kueue's quota or a node, is
   queued: its reason goes to its log, tasks/run_waits.py); a killed flow process is marked CRASHED by
   the heartbeat automation of `mlyard up` and so frees it within a minute;
3. record every enabled schedule's slots due up to `lead` seconds from now and move its watermark,
   in one transaction (mlyard.schedules.planning decides what catch-up keeps);
4. start the waiting slots the concurrency limit leaves room for (or skip them), the most urgent
   slot of all schedules first, for at most `budget_seconds` a pass (the next pass takes up the rest
   at once, so that slots coming due meanwhile are not held behind a long pass): each is a flow run of
   the target deployment, created with the idempotency key (schedule, slot, when the slot was
   recorded), tagged with the schedule and the slot, its parameters rendered for the slot.
   A slot still ahead is created as a Prefect run scheduled at the slot's time, which the worker
   starts then, as Prefect's own scheduler does: creating a run costs Prefect on SQLite 0.1-0.5 s
   (its own services hold the database lock at times), so the lead is what keeps a burst of
   schedules firing in the same second on time.

Exactly once: the catalog holds one row per (schedule, slot), and Prefect returns the existing run
for an idempotency key it has seen, so a scheduler killed between creating a run and recording it
finds the same run again on its next pass.

Why not Prefect's own deployment schedules: they read 5-field cron only (no seconds first, no
@every), have no catch-up (a missed slot is never run) and no end time, and a deployment concurrency
limit can be left holding a slot of a run that died. Prefect still does everything else: the runs
are its flow runs, its workers run them, its UI shows them, its idempotency keys guard them.

`python -m mlyard.tasks.scheduling` runs the loop (`mlyard up` starts it; flows/scheduler.py runs it as a
deployment in production).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from uuid import UUID

from mlyard.core.names import TAG_NAMED
from mlyard.registry.schedules import ScheduleRecord, Schedules, SlotRecord
from mlyard.schedules.cron import Schedule
from mlyard.schedules.planning import Policy, dispatch, due, render, slot_label, trigger
from mlyard.tasks import run_waits as waits
from mlyard.tasks.local_line import WAITING
from mlyard.tasks.orchestration import flow_runs_by_id, quick_retries
from mlyard.tasks.promotion_watch import WATCH_SECONDS
from mlyard.tasks.schedule_targets import named_now

log = logging.getLogger("mlyard.scheduler")

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
NOT_STARTED = {"SCHEDULED", "PENDING"}
TAG_SCHEDULE = "mlyard.schedule"
TAG_SLOT = "mlyard.slot"
ALIVE_FILE = "scheduler.alive"  # touched before every pass (its age is the liveness probe of infra/k8s)


@dataclass
class Plan:
    """A schedule's trigger and policy, read once from its spec."""

    trigger: Schedule
    policy: Policy
    spec: dict[str, Any]


@dataclass
class PassReport:
    recorded: int = 0
    missed: int = 0
    started: int = 0
    skipped: int = 0
    ended: int = 0
    reclaimed: int = 0
    more: bool = False  # runs left to create: the next pass follows at once
    errors: list[str] = field(default_factory=list)


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def plan_of(record: ScheduleRecord) -> Plan:
    spec = record.spec
    start, end = _dt(spec.get("start_time")), _dt(spec.get("end_time"))
    if start is not None:  # whole seconds, as the spec now keeps it (a schedule saved before kept a fraction,
        start = start.replace(microsecond=0)  # which made an interval fire at start_time itself)
    created = _dt(record.created_at) or datetime.now(timezone.utc)
    anchor = start or created.replace(microsecond=0)
    interval = spec.get("interval")
    seconds = None
    if interval:
        from mlyard.core.specs.schedule import UNIT_SECONDS

        seconds = int(interval["every"]) * UNIT_SECONDS[interval.get("unit", "minutes")]
    trig = trigger(spec.get("cron"), seconds, spec.get("timezone", "UTC"), anchor)
    policy = Policy(start=start, end=end, catchup=spec.get("catchup", True), max_slots=spec.get("catchup_max_slots"),
                    max_age_seconds=spec.get("catchup_max_age_seconds"))
    return Plan(trig, policy, spec)


class Scheduler:
    """One scheduler over the catalog's schedules and a Prefect client (the sync client)."""

    def __init__(self, store: Schedules, client: Any, start_timeout_seconds: float = 600.0,
                 lead_seconds: float = 60.0, clock: Callable[[], float] = time.time, budget_seconds: float = 2.0):
        self.store, self.client, self.start_timeout, self.clock = store, client, start_timeout_seconds, clock
        self.lead, self.budget = lead_seconds, budget_seconds
        self._plans: dict[tuple[int, str], Plan] = {}
        self._records: list[ScheduleRecord] = []
        self._pools: dict[str, Any] = {}  # deployment id -> its work pool (None: none)
        self.waits = waits.Waits(client)

    def _plan(self, record: ScheduleRecord) -> Plan:
        key = (record.id, repr(sorted(record.spec.items())))
        if key not in self._plans:
            self._plans = {k: v for k, v in self._plans.items() if k[0] != record.id}
            self._plans[key] = plan_of(record)
        return self._plans[key]

    # -- 1. confirm ------------------------------------------------------------------------------

    def _confirm(self, record: ScheduleRecord) -> ScheduleRecord:
        try:
            if record.deployment_id:
                self.client.read_deployment(UUID(record.deployment_id))
        except Exception as exc:  # noqa: BLE001 - Prefect's ObjectNotFound and the like: a reason to show
            if type(exc).__name__ == "ObjectNotFound":
                return self.store.set_status(record.name, "CREATE FAILED",
                                             f"deployment {record.spec.get('deployment')} not found; create it, then "
                                             "copy this schedule")
            raise
        status = "ENABLED" if record.spec.get("enabled", True) else "DISABLED"
        return self.store.set_status(record.name, status)

    # -- 2. refresh ------------------------------------------------------------------------------

    def refresh(self, records: list[ScheduleRecord], report: PassReport, now: float) -> dict[int, int]:
        """Which started runs have ended; the number still going per schedule."""
        from prefect.states import Cancelled

        wanted = {r.id for r in records}
        started = [s for s in self.store.slots_in(["STARTED"]) if s.schedule_id in wanted]  # one query, all schedules
        going: dict[int, int] = {r.id: 0 for r in records}
        if not started:
            return going
        runs = flow_runs_by_id(self.client, [s.flow_run_id for s in started if s.flow_run_id])
        ended = []
        for slot in started:
            fr = runs.get(slot.flow_run_id or "")
            state: str | None = fr.state.type.value if fr is not None and fr.state is not None else None
            if fr is None or state in FINAL:
                ended.append(slot.id)
            elif (waits.taken(fr) and self.waits.say(fr) != waits.GONE) or (fr.state and fr.state.name == WAITING):
                going[slot.schedule_id] += 1  # its Job waits (Kueue, a node) or it is in the local pool's line: queued
            elif state in NOT_STARTED and now - max(slot.slot_epoch, slot.started_at or now) > self.start_timeout:
                self.client.set_flow_run_state(fr.id, Cancelled(
                    message=f"not started within {self.start_timeout:.0f} s of its slot (no worker took it); "
                            "cancelled by the mlyard scheduler"), force=True)
                ended.append(slot.id)
                report.reclaimed += 1
            else:
                going[slot.schedule_id] += 1
        self.store.mark(ended, "ENDED")
        report.ended += len(ended)
        return going

    # -- 3 and 4. record and start ---------------------------------------------------------------

    def _start(self, record: ScheduleRecord, slot: SlotRecord, plan: Plan, now: float) -> str:
        from prefect.states import Scheduled

        from mlyard.core.access import PROJECT_TAG, run_tags
        from mlyard.core.names import FLOW_TRAIN, RUN_NAMES, render_run_name
        from mlyard.tasks.orchestration import training_job_variables

        slot_epoch, label = slot.slot_epoch, slot_label(slot.slot_epoch)
        assert record.deployment_id is not None
        state: Any = Scheduled(scheduled_time=datetime.fromtimestamp(slot_epoch, timezone.utc)) if slot_epoch > now else None
        parameters = render(plan.spec.get("parameters", {}), slot_epoch)
        # a training's resources and image as its pool's job variables, as a run made from the CLI gets them
        flow = str(record.spec.get("deployment", "")).split("/", 1)[0]
        # one name everywhere: the run's own (its spec's, as every mlyard list shows it), else the slot's
        name = (render_run_name(RUN_NAMES[flow], parameters) if flow in RUN_NAMES else None) or f"{record.name}-{label}"
        # the schedule's project and its maker's: its runs count against that project's quota, show in its
        # lists and the Prefect UI's door, and carry them into the script (EM_APPKEY) and every log record
        owner = run_tags(record.project, record.owner) if record.owner else [f"{PROJECT_TAG}{record.project}"]
        fr = self.client.create_flow_run_from_deployment(
            UUID(record.deployment_id), parameters=parameters,
            name=name, tags=[f"{TAG_SCHEDULE}:{record.name}", f"{TAG_SLOT}:{label}", TAG_NAMED, *owner],
            idempotency_key=f"mlyard.schedule:{record.id}:{slot_epoch}:{slot.due_at:.6f}", state=state,
            job_variables=training_job_variables(self.client, record.deployment_id, parameters, self._pools,
                                                 record.project) if flow == FLOW_TRAIN else None)
        self.store.started(slot.id, str(fr.id))
        return str(fr.id)

    def tick(self, now: float | None = None) -> PassReport:
        """One pass. The slots the limits let start, of every schedule, are created most urgent (earliest
        slot) first, for at most `budget` seconds: a pass that ran over (Prefect on SQLite takes 0.1 to
        over 1 s a run under load) would hold back slots that came due meanwhile; what is left over
        is taken up by the next pass, which follows at once (`PassReport.more`)."""
        now = self.clock() if now is None else now
        report = PassReport()
        records = [named_now(self.store, self.client, r) for r in self.store.all()]  # older mlyards' names
        self._records = records  # next_wake reads them rather than the catalog again
        for i, rec in enumerate(records):
            if rec.status == "CREATE REQUESTED":
                records[i] = self._confirm(rec)
        going = self.refresh(records, report, now)
        ready: list[tuple[ScheduleRecord, SlotRecord, Plan]] = []
        for rec in records:
            if rec.status != "ENABLED":
                continue
            try:
                plan = self._plan(rec)
                d = due(plan.trigger, plan.policy, rec.watermark_epoch or int(now), now, self.lead)
                if d.slots or d.missed or d.watermark != rec.watermark_epoch:
                    report.recorded += self.store.record_due(rec.id, d.slots, d.watermark, d.missed)
                    report.missed += d.missed
                limit = int(plan.spec.get("max_concurrency", 1))
                room = limit - going.get(rec.id, 0)
                waiting = self.store.slots(rec.id, ["WAITING"], limit=max(room, 0) + 1000)
                start, skip = dispatch(waiting, going.get(rec.id, 0), limit, plan.spec.get("when_busy", "wait"))
                skip = [s for s in skip if s.slot_epoch <= now]  # a slot still ahead is busy only at its time
                if skip and plan.spec.get("when_busy") == "skip":
                    self.store.mark([s.id for s in skip], "SKIPPED")
                    report.skipped += len(skip)
                ready += [(rec, slot, plan) for slot in start]
            except Exception as exc:  # noqa: BLE001 - one schedule's trouble must not stop the others
                log.exception("schedule %s", rec.name)
                report.errors.append(f"{rec.name}: {exc}")
        ready.sort(key=lambda r: (r[1].slot_epoch, r[0].id))
        self._start_all(ready, now, report)
        return report

    def _start_all(self, ready: list[tuple[ScheduleRecord, SlotRecord, Plan]], now: float, report: PassReport) -> None:
        """Create the runs of `ready` in that order until `budget` seconds have passed.

        One at a time: Prefect on SQLite answers most creations in 0.02-0.1 s but holds one for about
        2 s whenever its event persister writes a batch at the same moment (the database lock, a 503,
        the client's retry). Creating several at a time, or having the persister write bigger batches,
        made those stalls longer and more frequent here (bench/README.md), not rarer."""
        t0 = time.monotonic()
        for n, (rec, slot, plan) in enumerate(ready):
            if n and time.monotonic() - t0 > self.budget:
                report.more = True  # the rest is the next pass's, which follows at once
                return
            try:
                if not self.store.enabled(rec.id):  # disabled or deleted since the pass began
                    continue
                self._start(rec, slot, plan, now)
                report.started += 1
            except Exception as exc:  # noqa: BLE001 - one schedule's trouble must not stop the others
                log.error("schedule %s: %s", rec.name, exc, exc_info=exc)
                report.errors.append(f"{rec.name}: {exc}")

    def withdraw(self, record: ScheduleRecord, now: float) -> int:
        """A schedule being disabled: runs created ahead of a slot still to come are cancelled, and those
        slots, like every slot still to come and not started, are forgotten; the watermark comes back to
        now. Enabling it again records them afresh: a slot still ahead runs at its time, one that passed
        meanwhile follows the catch-up policy like any other missed slot (its new run has a new
        idempotency key: the key holds when the slot was recorded, and that record is gone)."""
        from prefect.exceptions import ObjectNotFound

        withdrawn = []
        for slot in self.store.slots(record.id, ["STARTED"]):
            if slot.slot_epoch > now and slot.flow_run_id:
                # a run made ahead, not started: removed, not left as a STOPPED twin of the one enabling makes again
                with contextlib.suppress(ObjectNotFound):
                    self.client.delete_flow_run(UUID(slot.flow_run_id))
                withdrawn.append(slot.id)
        self.store.forget(withdrawn)
        self.store.forget_after(record.id, int(now))
        return len(withdrawn)

    def next_wake(self, now: float, longest: float = 1.0) -> float:
        """When the next pass is needed: `lead` before the earliest next slot of an enabled schedule,
        else `longest` from now."""
        wake = now + longest
        for rec in self._records:
            if rec.status != "ENABLED":
                continue
            try:
                nxt = self._plan(rec).trigger.next_after(datetime.fromtimestamp(max(now + self.lead,
                                                                                    rec.watermark_epoch or now),
                                                                                timezone.utc))
            except Exception:  # noqa: BLE001
                continue
            if nxt is not None:
                wake = min(wake, nxt.timestamp() - self.lead)
        return wake

    def run(self, stop: threading.Event, longest_sleep: float = 1.0,
            housekeeping: Callable[[], None] | None = None, housekeeping_every: float = 3600.0,
            alive: Path | None = None, watch: Callable[[], object] | None = None,
            watch_every: float = WATCH_SECONDS) -> None:
        """Passes until `stop` is set; a failing pass (Prefect unreachable, ...) is retried with backoff.
        `housekeeping` (the clean-up of expired pipeline artifacts) runs every `housekeeping_every` s, `watch`
        (promotions whose run ended without a verdict: tasks/promotion_watch.py) every `watch_every` s.
        `alive` is touched before every pass: a liveness probe reads its age (infra/k8s)."""
        backoff = 1.0
        last = {"housekeeping": 0.0, "watch": 0.0}
        while not stop.is_set():
            if alive is not None:
                alive.touch()
            for name, chore, every in (("housekeeping", housekeeping, housekeeping_every), ("watch", watch, watch_every)):
                if chore is not None and self.clock() - last[name] > every:
                    last[name] = self.clock()
                    try:
                        chore()
                    except Exception:  # noqa: BLE001 - the next look tries again; the schedules go on
                        log.exception("%s failed", name)
            try:
                t0 = self.clock()
                report = self.tick()
                backoff = 1.0
                if report.started or report.skipped or report.reclaimed or report.missed:
                    log.info("started %d, skipped %d, missed %d, reclaimed %d (pass %.2f s)", report.started,
                             report.skipped, report.missed, report.reclaimed, self.clock() - t0)
                wait = 0.0 if report.more else self.next_wake(self.clock(), longest_sleep) - self.clock()
            except Exception:  # noqa: BLE001
                log.exception("scheduler pass failed; retrying in %.0f s", backoff)
                wait, backoff = backoff, min(backoff * 2, 30.0)
            stop.wait(max(0.0, wait) + 0.005)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.tasks.scheduling", description="The mlyard scheduler loop.")
    parser.add_argument("--once", action="store_true", help="One pass, then exit.")
    args = parser.parse_args(argv)
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    from mlyard.core.connection import connect
    from mlyard.core.errors import StackError
    from mlyard.core.settings import Settings, require_shared_stores
    from mlyard.registry.catalog import Catalog
    from mlyard.tasks import promotion_watch
    from mlyard.tasks.leader import wait_to_lead
    from mlyard.tasks.pipelines import sweep

    try:
        settings = Settings()
        require_shared_stores(settings)
    except StackError as exc:
        raise SystemExit(f"mlyard scheduler: {exc}") from None
    connect(settings)
    from prefect.client.orchestration import get_client

    store = Schedules(Catalog(settings.catalog_db_url))
    with get_client(httpx_settings={"transport": quick_retries()}, sync_client=True) as client:
        scheduler = Scheduler(store, client, settings.schedule_start_timeout_seconds, settings.schedule_lead_seconds)
        if args.once:
            print(scheduler.tick())
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        # one of a cluster's replicas: it schedules only while holding the Lease
        leadership = settings.lease and wait_to_lead(settings.lease, settings.kube_namespace, stop,
                                                     settings.home_dir / ALIVE_FILE)
        if stop.is_set():
            return
        log.info("scheduler started (Prefect at %s)", client.api_url)

        def clean_up() -> None:
            removed = sweep(settings.pipeline_runs_dir, settings.pipeline_artifact_retention_days)
            if removed:
                log.info("removed the outputs of %d pipeline run(s) older than %g days", len(removed),
                         settings.pipeline_artifact_retention_days)

        try:
            scheduler.run(stop, housekeeping=clean_up, alive=settings.home_dir / ALIVE_FILE,
                          watch=lambda: promotion_watch.watch(settings, client))
        except KeyboardInterrupt:
            pass
        if leadership and leadership.lost.is_set():  # the Deployment starts it again, as a follower
            raise SystemExit(f"mlyard scheduler: lost Lease {settings.kube_namespace}/{settings.lease}")


if __name__ == "__main__":
    main()
