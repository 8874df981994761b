"""Schedules on the running platform: the scheduler of `mlyard up` (a real process) makes Prefect flow
runs on a real Prefect server. Most targets are `train/train-gpu`, a deployment on the Kubernetes pool: no
worker runs there (no cluster here), so its runs stay scheduled and hold their concurrency slots until
the scheduler reclaims them (MLYARD_SCHEDULE_START_TIMEOUT_SECONDS=12 in conftest.py). One schedule
runs a real training on the local pool to COMPLETED. A schedule of `train/train-gpu` names its inputs as pods
read them: the local source of TRAIN is uploaded when it is saved (`uploads`: MLYARD_UPLOAD_URI on moto's
S3 server), or refused without an upload prefix."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest
from prefect.exceptions import ObjectNotFound
from test_user_paths import _ok, _one_line_error, mlyard

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
TRAIN = {"spec": {"name": "sched-{{ slot_date }}", "experiment": "schedules", "source_uri": str(EXAMPLES / "sklearn_digits"),
                  "entry_point": "train.py", "hyperparameters": {"epochs": 1, "epoch_seconds": 0}}}


@pytest.fixture
def uploads(monkeypatch, s3_env, bucket):
    """Where local inputs of a schedule on the Kubernetes pool go (as a workstation configured for the cluster)."""
    monkeypatch.setenv("MLYARD_UPLOAD_URI", f"s3://{bucket}/uploads")
    return f"s3://{bucket}/uploads"


def _runs(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])), limit=200)


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_catchup_concurrency_exactly_once_and_reclaim(stack, uploads):
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    import mlyard.schedule as schedules
    from mlyard.core.connection import connect
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=20)
    view = schedules.create({"name": "catchup", "deployment": "train/train-gpu", "cron": "* * * * * *",
                             "start_time": start.isoformat(), "max_concurrency": 3, "parameters": TRAIN})
    assert view["status"] == "ENABLED" and view["read_as"].startswith("second *")
    tag = "mlyard.schedule:catchup"
    # a second scheduler in this process races the stack's one: still one run per slot
    store = Schedules(Catalog(connect().catalog_db_url))
    with get_client(sync_client=True) as client:
        racer = Scheduler(store, client, start_timeout_seconds=600)
        threads = [threading.Thread(target=racer.tick) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    runs = _wait(lambda: (r := _runs(tag)) and len(r) >= 3 and r, 20, "three runs")
    slots = Counter(t for r in runs for t in r.tags if t.startswith("mlyard.slot:"))
    assert all(n == 1 for n in slots.values()), slots
    first = min(slots)
    oldest = start + timedelta(seconds=1)  # strictly after start_time, as Kubeflow counts
    assert first == f"mlyard.slot:{oldest.strftime('%Y%m%dT%H%M%SZ')}", "catch-up starts with the oldest slot"
    shown = schedules.show("catchup", runs=50)
    # 3 going; two schedulers racing may briefly exceed the limit (schedules/README.md), never duplicate
    assert shown["slots"]["STARTED"] <= 6 and shown["slots"].get("WAITING", 0) >= 15
    assert runs[0].parameters["spec"]["name"] == "sched-" + start.date().isoformat()
    assert runs[0].name == runs[0].parameters["spec"]["name"], "one name in Prefect and in mlyard's lists"

    # the Kubernetes pool has no worker here: after 12 s the runs are cancelled and their slots reclaimed
    _wait(lambda: sum(1 for r in _runs(tag) if r.state.type.value == "CANCELLED") >= 3, 40, "reclaimed slots")
    more = _wait(lambda: (r := _runs(tag)) and len(r) >= 6 and r, 20, "the next waiting slots to start")
    # a run whose process was killed turns CRASHED (the heartbeat automation of `mlyard up`, tested in
    # test_stack); set here as that automation does, it frees its slot at once
    going = [r for r in more if r.state.type.value == "SCHEDULED"]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(going[0].id, Crashed(message="killed"), force=True)
    _wait(lambda: len(_runs(tag)) > len(more), 10, "a run after the crashed one")

    # a run still going blocks deletion; disabled and cancelled, the schedule goes
    with pytest.raises(Exception, match="still going"):
        schedules.delete("catchup")
    schedules.disable("catchup")
    from prefect.states import Cancelled

    def cancel_and_delete() -> bool:
        # a pass of the stack's scheduler that began before the disable may still be creating its
        # last run (it asks before each one: at most one slips through)
        with get_client(sync_client=True) as client:
            for r in _runs(tag):
                if not r.state.is_final():
                    client.set_flow_run_state(r.id, Cancelled(), force=True)
        try:
            schedules.delete("catchup")
        except Exception as exc:  # noqa: BLE001
            assert "still going" in str(exc)
            return False
        return True

    _wait(cancel_and_delete, 15, "the disabled schedule to be deleted")
    final = Counter(t for r in _runs(tag) for t in r.tags if t.startswith("mlyard.slot:"))
    assert all(n == 1 for n in final.values()), final


def test_a_pass_starts_the_most_urgent_slot_of_all_schedules_first(stack, tmp_path):
    """A pass creates runs earliest slot first across schedules, for at most its budget: with a budget
    of 0 s each pass creates one run. A scheduler of our own over a catalog of its own (so the stack's
    scheduler leaves these schedules alone), against the real Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    store = Schedules(Catalog(f"sqlite:///{tmp_path / 'catalog.db'}"))
    now = int(time.time())
    with get_client(sync_client=True) as client:
        dep = str(client.read_deployment_by_name("train/train-gpu").id)
        for name, back in (("urgency-b", 10), ("urgency-a", 20)):  # b is older, a's slot is earlier
            start = datetime.fromtimestamp(now - back - 3600, timezone.utc).isoformat()  # its first slot: now - back
            store.create(name, {"name": name, "deployment": "train/train-gpu", "start_time": start, "max_concurrency": 1,
                                "interval": {"every": 1, "unit": "hours"}, "parameters": TRAIN}, dep, "ENABLED",
                         now - back - 3600)  # the watermark at the start, as schedules.create sets it
        scheduler = Scheduler(store, client, lead_seconds=0, budget_seconds=0)
        first = scheduler.tick()
        assert (first.started, first.more) == (1, True)
        assert [s.slot_epoch for s in store.slots_in(["STARTED"])] == [now - 20], "the earliest slot first"
        second = scheduler.tick()
        assert (second.started, second.more) == (1, False)
        runs = _runs("mlyard.schedule:urgency-a") + _runs("mlyard.schedule:urgency-b")
        assert len(runs) == 2
        for r in runs:
            client.set_flow_run_state(r.id, Cancelled(), force=True)


def test_a_disable_during_a_pass_stops_its_remaining_runs(stack, tmp_path):
    """A pass reads the schedules once at its start; a disable that comes in while it creates runs must
    stop the rest of them (the scheduler asks before each run). The disable is made right after the
    pass's first run is recorded, through the store the pass itself uses."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    class DisablingStore(Schedules):
        def started(self, slot_id: int, flow_run_id: str) -> None:
            super().started(slot_id, flow_run_id)
            self.set_status("midpass", "DISABLED")

    store = DisablingStore(Catalog(f"sqlite:///{tmp_path / 'catalog.db'}"))
    now = int(time.time())
    with get_client(sync_client=True) as client:
        dep = str(client.read_deployment_by_name("train/train-gpu").id)
        store.create("midpass", {"name": "midpass", "deployment": "train/train-gpu", "max_concurrency": 5,
                                 "cron": "* * * * * *", "parameters": TRAIN}, dep, "ENABLED",
                     now - 5)  # five slots due at once
        report = Scheduler(store, client, lead_seconds=0).tick()
        assert report.recorded >= 5 and report.started == 1, report
        assert len(_runs("mlyard.schedule:midpass")) == 1
        for r in _runs("mlyard.schedule:midpass"):
            client.set_flow_run_state(r.id, Cancelled(), force=True)


def test_enabled_late_with_catchup_off_runs_only_the_latest_missed_slot(stack, uploads):
    import mlyard.schedule as schedules

    gpu_train = {"spec": {**TRAIN["spec"], "resources": {"gpu_count": 2}, "image": "docker.io/pytorch/pytorch:2.4.0"}}
    said: list[str] = []
    schedules.create({"name": "nocatch", "deployment": "train/train-gpu", "interval": {"every": 1, "unit": "seconds"},
                      "max_concurrency": 10, "catchup": False, "enabled": False, "parameters": gpu_train},
                     echo=said.append)
    view = schedules.show("nocatch")
    assert view["status"] == "DISABLED"
    stored = view["parameters"]["spec"]  # the upload, not the path on this machine; placeholders kept
    assert stored["source_uri"].startswith(f"{uploads}/") and stored["source_uri"].endswith("/sklearn_digits")
    assert stored["name"] == TRAIN["spec"]["name"] and any("source_uri: uploading" in line for line in said), said
    time.sleep(4)
    enabled_at = time.time()
    schedules.enable("nocatch")
    _wait(lambda: _runs("mlyard.schedule:nocatch"), 10, "a run")
    shown = schedules.show("nocatch", runs=0)
    schedules.disable("nocatch")
    slots = sorted(datetime.strptime(next(t for t in r.tags if t.startswith("mlyard.slot:")).split(":", 1)[1],
                                     "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
                   for r in _runs("mlyard.schedule:nocatch"))
    # catch-up off: of the slots missed while disabled only the latest runs, so no run is for a slot more
    # than a second (the interval) before the scheduler saw it enabled
    assert slots[0] >= enabled_at - 1, (slots, enabled_at)
    assert shown["missed"] >= 3
    # a scheduled training on a Kubernetes pool gets its spec's GPUs and image, as a submitted one does
    for run in _runs("mlyard.schedule:nocatch"):
        assert run.job_variables["gpu_count"] == 2, run.job_variables
        assert run.job_variables["image"] == "docker.io/pytorch/pytorch:2.4.0", run.job_variables


def test_a_scheduled_training_runs_on_the_local_pool(stack):
    """The user's path: a schedule of `train/train-local`, created from a fresh CLI process, runs its training
    to COMPLETED with the slot in its name; `schedules show` lists it."""
    # the slot falls after the schedule is saved (a fresh CLI process takes seconds to create it), so
    # its lateness is the scheduler's own
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=12)
    home = Path(__import__("os").environ["MLYARD_HOME"]).parent
    # what is scheduled is a training, whatever its script does: one that reports a metric (the digits
    # example costs 9 CPU-seconds a run; the users' paths run it)
    (home / "sched-algo").mkdir()
    (home / "sched-algo" / "train.py").write_text("print('epoch=1 accuracy=0.9', flush=True)\n")
    # a relative path is taken from where the schedule is created (the worker runs elsewhere)
    spec = {"name": "hourly-train", "deployment": "train/train-local", "interval": {"every": 1, "unit": "hours"},
            "start_time": (start - timedelta(hours=1)).isoformat(),  # its first slot: start_time + 1 h = start
            "parameters": {"spec": {**TRAIN["spec"], "source_uri": "sched-algo"}}}
    path = home / "hourly.yaml"
    path.write_text(json.dumps(spec))
    _ok(mlyard("schedules", "create", "-f", str(path)))
    assert datetime.now(timezone.utc) < start, "the machine took the whole lead to create the schedule"
    from mlyard.schedule import show  # the wait polls in this process: a CLI process every 0.3 s takes a core

    _wait(lambda: (v := show("hourly-train"))["runs"] and v["runs"][0]["run_state"] == "Completed", 120,
          "the scheduled training to complete")
    shown = json.loads(_ok(mlyard("schedules", "show", "hourly-train", "--json")))  # what the user sees
    run = shown["runs"][0]
    assert shown["parameters"]["spec"]["source_uri"] == str(home / "sched-algo")
    completed = _runs("mlyard.schedule:hourly-train")
    assert [r.name for r in completed] == [f"sched-{start.date().isoformat()}"], \
        "a scheduled run keeps the name it was made with: its training's, as `trainings list` shows it"
    assert run["lateness_seconds"] >= 0, "a run never starts before its slot"
    assert run["slot"] == start.isoformat() and run["lateness_seconds"] is not None and run["lateness_seconds"] < 5
    assert shown["next"][0] == (start + timedelta(hours=1)).isoformat()
    trainings = json.loads(_ok(mlyard("trainings", "list", "--json")))
    assert any(t["name"] == f"sched-{start.date().isoformat()}" and t["status"] == "COMPLETE" for t in trainings)
    _ok(mlyard("schedules", "disable", "hourly-train"))
    assert json.loads(_ok(mlyard("schedules", "list", "--json")))[-1]["status"] == "DISABLED"


def test_a_local_input_with_a_placeholder_is_refused_before_anything_is_sent(stack, uploads, tmp_path):
    import boto3

    import mlyard.schedule as schedules
    from mlyard.core.errors import SpecError

    (tmp_path / "day-2030-01-01").mkdir()
    spec = {**TRAIN["spec"], "datasets": {"train": str(tmp_path / "day-{{ slot_date }}")}}
    with pytest.raises(SpecError) as refused:
        schedules.create({"name": "daily-data", "deployment": "train/train-gpu", "cron": "0 0 0 * * *",
                          "parameters": {"spec": spec}})
    assert refused.value.field == "parameters.spec.datasets.train" and "placeholder" in str(refused.value)
    bucket = uploads.removeprefix("s3://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=os.environ["MLYARD_S3_ENDPOINT_URL"], aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket), "nothing was sent"
    assert all(s["name"] != "daily-data" for s in schedules.list_schedules())


def test_bad_schedules_are_refused_in_one_line(stack, tmp_path):
    def refused(spec: dict, *words: str):
        f = tmp_path / "s.yaml"
        f.write_text(json.dumps({"name": "bad", "deployment": "train/train-gpu", "cron": "0 * * * * *",
                                 "parameters": TRAIN, **spec}))
        _one_line_error(mlyard("schedules", "create", "-f", str(f)), *words)

    refused({"cron": "0 61 * * * *"}, "cron", "minute", "above maximum")
    refused({"cron": "*/5 * * * *"}, "cron", "ambiguous", "0 */5 * * * *")
    refused({"cron": "0 0 0 30 2 *"}, "cron", "never")
    refused({"deployment": "nope/local"}, "deployment", "train/train-local")
    refused({"max_concurrency": 11}, "max_concurrency")
    refused({"start_time": "2030-01-02T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"}, "end_time", "after")
    refused({"parameters": {"spec": TRAIN["spec"], "extra": 1}}, "parameters.extra", "takes spec")
    refused({"parameters": {"spec": {**TRAIN["spec"], "entry_point": 3}}}, "parameters")
    refused({"parameters": {"spec": {**TRAIN["spec"], "max_run_time_seconds": -5}}}, "max_run_time_seconds")
    # the gpu pool's pods cannot read a path on this machine: without an upload prefix, refused as --submit is
    refused({}, "parameters.spec.source_uri", str(EXAMPLES / "sklearn_digits"), "MLYARD_UPLOAD_URI")
    assert json.loads(_ok(mlyard("schedules", "list", "--json"))) == [] or all(
        s["name"] != "bad" for s in json.loads(_ok(mlyard("schedules", "list", "--json"))))
    _one_line_error(mlyard("schedules", "preview", "0 0 24 * * *"), "hour", "above maximum (23)")
    never = json.loads(_ok(mlyard("schedules", "preview", "0 0 0 30 2 *", "--json")))
    assert never["next"] == [] and "never" in never["never_fires"]
    got = json.loads(_ok(mlyard("schedules", "preview", "CRON_TZ=Asia/Seoul 0 0 9 * * *", "--start",
                                "2026-11-22T12:00:00Z", "--count", "2", "--json")))
    assert got["next"] == ["2026-11-23T09:00:00+09:00", "2026-11-24T09:00:00+09:00"]


def test_disabled_then_enabled_keeps_the_slot_whose_run_was_made_ahead(stack, tmp_path):
    """A run created within the lead, then its schedule disabled: the run is cancelled and, enabled
    again before the slot, the slot runs at its time with a new run (it was lost as SKIPPED); enabled
    after it, the slot is a missed one that catch-up runs. A scheduler of our own over its own catalog."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    store = Schedules(Catalog(f"sqlite:///{tmp_path / 'catalog.db'}"))
    now = int(time.time())
    start = datetime.fromtimestamp(now + 30 - 3600, timezone.utc).isoformat()  # its slots: now + 30, + 1 h, ...
    with get_client(sync_client=True) as client:
        dep = str(client.read_deployment_by_name("train/train-gpu").id)
        rec = store.create("toggled", {"name": "toggled", "deployment": "train/train-gpu", "start_time": start,
                                       "interval": {"every": 1, "unit": "hours"}, "parameters": TRAIN},
                           dep, "ENABLED", now - 1)
        scheduler = Scheduler(store, client, lead_seconds=60)
        assert scheduler.tick(now=now).started == 1  # made ahead, scheduled at the slot
        [ahead] = store.slots(rec.id, ["STARTED"])
        assert ahead.slot_epoch == now + 30
        store.set_status("toggled", "DISABLED")
        scheduler.withdraw(store.get("toggled"), now + 1)
        # removed, not left as a STOPPED twin of the run that enabling it again makes for the same slot
        with pytest.raises(ObjectNotFound):
            client.read_flow_run(UUID(ahead.flow_run_id))
        store.set_status("toggled", "ENABLED")
        assert scheduler.tick(now=now + 2).started == 1, "the slot came back when enabled before its time"
        [again] = store.slots(rec.id, ["STARTED"])
        assert again.slot_epoch == now + 30 and again.flow_run_id != ahead.flow_run_id
        fresh = client.read_flow_run(UUID(again.flow_run_id))
        assert fresh.state.is_scheduled() and fresh.state.state_details.scheduled_time.timestamp() == now + 30

        # disabled again and enabled after the slot: catch-up (on by default) runs it at once
        store.set_status("toggled", "DISABLED")
        scheduler.withdraw(store.get("toggled"), now + 3)
        store.set_status("toggled", "ENABLED")
        assert scheduler.tick(now=now + 40).started == 1
        [late] = store.slots(rec.id, ["STARTED"])
        assert late.slot_epoch == now + 30 and late.flow_run_id not in (ahead.flow_run_id, again.flow_run_id)
        client.set_flow_run_state(UUID(late.flow_run_id), Cancelled(), force=True)


def test_a_schedule_saved_under_a_deployments_name_of_before_runs_the_one_named_so_now(stack):
    """An older mlyard named deployments after their pool (`train/gpu`) and saved that name and the
    deployment's id with each schedule; `mlyard up` has since replaced the deployment by `train/train-gpu`.
    The scheduler's next pass points the schedule at that one, and its next runs are its."""
    import uuid

    from prefect.client.orchestration import get_client

    from mlyard.core.connection import connect
    from mlyard.core.specs.schedule import ScheduleSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    spec = ScheduleSpec.model_validate({"name": "named-before", "deployment": "train/gpu", "cron": "0 0 0 1 1 *",
                                        "parameters": TRAIN})
    assert spec.deployment == "train/train-gpu"  # as a spec reads it now
    store = Schedules(Catalog(connect().catalog_db_url))
    store.create("named-before", {**spec.model_dump(mode="json"), "deployment": "train/gpu"}, str(uuid.uuid4()),
                 "ENABLED", int(time.time()))
    try:
        with get_client(sync_client=True) as client:
            Scheduler(store, client, start_timeout_seconds=600).tick()
            now = client.read_deployment_by_name("train/train-gpu")
        record = store.get("named-before")
        assert record.spec["deployment"] == "train/train-gpu" and record.deployment_id == str(now.id), record
        assert record.status == "ENABLED", record
    finally:
        store.delete("named-before")
