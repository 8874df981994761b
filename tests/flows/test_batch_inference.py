"""The batch-inference flow on the real stack: S3 in and out (moto on 127.0.0.1), several local worker
processes on one big file, resume after the flow process is killed, statuses, stop, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs import BatchInferenceSpec

ROOT = Path(__file__).resolve().parents[2]


def _rows(X, start=0):
    return [{"id": f"r{start + i}", "features": x.tolist()} for i, x in enumerate(X)]


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_s3_input_and_output_through_the_flow(platform, s3_env, s3_settings, bucket, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer
    from mlyard.runs import BATCH, get_run
    from mlyard.tasks.storage import Storage

    storage = Storage(s3_settings)
    X = models["X"]
    _write(tmp_path / "in" / "part-0.jsonl", _rows(X[:150]))
    _write(tmp_path / "in" / "part-1.jsonl", _rows(X[150:300], 150))
    (tmp_path / "in" / "notes.txt").write_text("not input")
    storage.upload(tmp_path / "in", f"s3://{bucket}/in")
    spec = BatchInferenceSpec(name="s3-batch", model=str(models["classifier"]), input_uri=f"s3://{bucket}/in",
                              input_format="jsonl", include=["*.jsonl"], output_uri=f"s3://{bucket}/out",
                              id_field="id", batch_size=32)
    result = batch_infer(spec)
    assert (result.files, result.rows, result.failed_rows, result.resumed_shards) == (2, 300, 0, 0)
    assert result.classes == ["0", "1", "2"] and result.rows_per_second > 0
    names = storage.list(f"s3://{bucket}/out")
    assert {"part-0.jsonl.predictions.jsonl", "part-1.jsonl.predictions.jsonl", "_summary.json"} <= set(names)
    assert not any(n.startswith("notes") for n in names)
    got = [json.loads(x) for x in storage.read_bytes(f"s3://{bucket}/out/part-1.jsonl.predictions.jsonl").splitlines()]
    import mlflow.sklearn

    expected = mlflow.sklearn.load_model(str(models["classifier"])).predict(X[150:300]).tolist()
    assert [g["prediction"] for g in got] == expected and got[0]["id"] == "r150" and got[-1]["row"] == 149
    summary = json.loads(storage.read_bytes(f"s3://{bucket}/out/_summary.json"))
    assert summary["rows"] == 300 and summary["failed_batches"] == 0
    run = platform.tracking.get_run(result.run_id)
    assert run.metrics["rows"] == 300 and run.status == "FINISHED"
    assert get_run(BATCH, result.batch_id).status == "COMPLETE"


def test_two_worker_processes_share_one_big_file(platform, models, tmp_path, monkeypatch):
    import mlyard.tasks.shards
    from mlyard.flows.batch_inference import batch_infer

    X = np.repeat(models["X"], 20, axis=0)  # 12,000 rows, about 1 MB
    path = _write(tmp_path / "big.jsonl", _rows(X))
    monkeypatch.setattr(mlyard.tasks.shards, "MIN_SPLIT_BYTES", 100_000)
    spec = BatchInferenceSpec(name="two-workers", model=str(models["classifier"]), input_uri=str(path),
                              input_format="jsonl", output_uri=str(tmp_path / "out"), id_field="id", workers=2,
                              batch_size=500)
    result = batch_infer(spec)
    assert result.rows == 12_000 and result.failed_rows == 0
    lines = _predictions(tmp_path / "out" / "big.jsonl.predictions.jsonl")
    assert [x["row"] for x in lines] == list(range(12_000)) and lines[-1]["id"] == "r11999"
    assert not list((tmp_path / "out" / "_mlyard" / "parts").rglob("*.jsonl"))  # joined, then removed


RUN_FLOW = """
import json, sys
from mlyard.core.settings import Settings
from mlyard.core.connection import connect
connect(Settings())
from mlyard.flows.batch_inference import batch_infer
from mlyard.core.specs import BatchInferenceSpec
batch_infer(BatchInferenceSpec(**json.loads(sys.argv[1])))
"""


def _crash_running(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[name]), state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"])))):
            client.set_flow_run_state(r.id, Crashed(message="killed"), force=True)


def test_rerun_after_the_flow_process_was_killed_produces_every_row_once(platform, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer

    for i in range(4):  # 4 files x 40 rows; the slow model takes ~0.02 s per 2-row batch: ~0.4 s a file
        _write(tmp_path / "in" / f"f{i}.jsonl", [{"id": f"{i}-{j}", "features": [float(j + 1), 1.0]} for j in range(40)])
    data = dict(name="resume", model=str(models["slow"]), input_uri=str(tmp_path / "in"), input_format="jsonl",
                output_uri=str(tmp_path / "out"), id_field="id", batch_size=2)
    proc = subprocess.Popen([sys.executable, "-c", RUN_FLOW, json.dumps(data)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "out" / "_mlyard" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(records.glob("*.json")) if records.exists() else []) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole flow process, mid-job
    proc.wait()
    finished = len(list(records.glob("*.json")))
    assert 1 <= finished < 4, "the kill should land between the first and the last file"
    # an interrupted output never looks complete: a predictions file is there whole (40 rows) or not at all
    outputs = list((tmp_path / "out").glob("*.predictions.jsonl"))
    assert len(outputs) >= finished and all(len(_predictions(p)) == 40 for p in outputs)

    _crash_running("resume")  # as the heartbeat automation does within a minute: the output is free again
    stale = tmp_path / "out" / ".f3.jsonl.predictions.jsonl.deadbeef.tmp"  # as a kill mid-copy leaves it
    stale.write_text('{"row": 0}\n')
    result = batch_infer(BatchInferenceSpec(**data))
    assert not stale.exists()
    assert result.resumed_shards == finished and result.rows == 160 and result.failed_rows == 0
    ids = [x["id"] for i in range(4) for x in _predictions(tmp_path / "out" / f"f{i}.jsonl.predictions.jsonl")]
    assert sorted(ids) == sorted(f"{i}-{j}" for i in range(4) for j in range(40)) and len(set(ids)) == 160


def test_another_job_cannot_write_into_a_used_output(platform, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer

    path = _write(tmp_path / "a.jsonl", _rows(models["X"][:5]))
    spec = BatchInferenceSpec(name="first", model=str(models["classifier"]), input_uri=str(path), input_format="jsonl",
                              output_uri=str(tmp_path / "out"), id_field="id", drop_fields=["label"])
    assert batch_infer(spec).failed_rows == 0
    before = (tmp_path / "out" / "a.jsonl.predictions.jsonl").read_bytes()
    other = spec.model_copy(update={"model": str(models["regressor"])})
    state = batch_infer(other, return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SpecError) and exc.field == "output_uri" and "another batch inference" in str(exc)
    assert (tmp_path / "out" / "a.jsonl.predictions.jsonl").read_bytes() == before


def test_two_identical_jobs_into_one_output_the_second_is_refused_naming_the_first(platform, models, tmp_path):
    """The first holds the output while it runs: the second (the same spec, run here) fails before it
    starts, naming the first; a command checking before it queues a run says the same."""
    from mlyard.core.errors import InUse
    from mlyard.flows.batch_inference import batch_infer
    from mlyard.tasks import checks

    for i in range(4):
        _write(tmp_path / "in" / f"f{i}.jsonl", [{"id": f"{i}-{j}", "features": [float(j + 1), 1.0]} for j in range(40)])
    data = dict(name="holder", model=str(models["slow"]), input_uri=str(tmp_path / "in"), input_format="jsonl",
                output_uri=str(tmp_path / "out"), id_field="id", batch_size=2)
    first = subprocess.Popen([sys.executable, "-c", RUN_FLOW, json.dumps(data)], cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        manifest = tmp_path / "out" / "_mlyard"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not manifest.exists():
            time.sleep(0.05)
        state = batch_infer(BatchInferenceSpec(**{**data, "name": "second"}), return_state=True)
        exc = state.result(raise_on_failure=False)
        assert isinstance(exc, InUse) and "batch inference" in str(exc) and "(holder, running since" in str(exc), exc
        with pytest.raises(InUse, match="output_uri"):
            checks.output_free(str(tmp_path / "out") + "/")
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    checks.output_free(str(tmp_path / "out"))  # free again once it ended
    ids = [x["id"] for i in range(4) for x in _predictions(tmp_path / "out" / f"f{i}.jsonl.predictions.jsonl")]
    assert len(ids) == len(set(ids)) == 160, "the work was done once"


def test_bad_input_fails_before_anything_starts(platform, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer
    from mlyard.runs import BATCH, get_run

    (tmp_path / "in").mkdir()
    path = _write(tmp_path / "in" / "a.jsonl", _rows(models["X"][:5]))
    cases = [
        ({"model": str(tmp_path / "nope")}, "model"),
        ({"model": "no-such-model@champion"}, None),
        ({"include": ["*.csv"]}, "include/exclude"),
        ({"output_uri": str(tmp_path / "in" / "out")}, "output_uri"),  # the next job would read its predictions
    ]
    for change, field in cases:
        spec = BatchInferenceSpec(**{"name": "bad", "model": str(models["classifier"]), "input_uri": str(tmp_path / "in"),
                                     "input_format": "jsonl", "output_uri": str(tmp_path / "out"), **change})
        state = batch_infer(spec, return_state=True)
        exc = state.result(raise_on_failure=False)
        assert state.is_failed() and (field is None or getattr(exc, "field", None) == field), exc
        assert get_run(BATCH, str(state.state_details.flow_run_id)).status == "CREATE FAILED"
        assert not (tmp_path / "out").exists() and not (tmp_path / "in" / "out").exists()
    with pytest.raises(SpecError, match="output_uri"):
        from mlyard.core.specs import load_spec

        load_spec(BatchInferenceSpec, {"name": "x", "model": "m@a", "input_uri": str(path), "input_format": "jsonl",
                                       "output_uri": "ftp://nope"})


def test_failure_budget_max_run_time_and_stop(platform, models, tmp_path):
    import threading

    from mlyard.flows.batch_inference import batch_infer
    from mlyard.runs import BATCH, get_run, list_runs, stop_run

    rows = [{"id": i, "features": [-999.0 if i % 2 else 1.0, 0.0]} for i in range(40)]
    path = _write(tmp_path / "f.jsonl", rows)
    spec = BatchInferenceSpec(name="failing", model=str(models["slow"]), input_uri=str(path), input_format="jsonl",
                              output_uri=str(tmp_path / "out"), id_field="id", batch_size=2, max_failed_batches=3)
    state = batch_infer(spec, return_state=True)
    info = get_run(BATCH, str(state.state_details.flow_run_id))
    assert info.status == "FAIL BATCH INFERENCE" and "4 batches failed" in info.cause

    slow = _write(tmp_path / "s.jsonl", [{"id": i, "features": [1.0, 0.0]} for i in range(2000)])
    too_long = BatchInferenceSpec(name="too-long", model=str(models["slow"]), input_uri=str(slow), input_format="jsonl",
                                  output_uri=str(tmp_path / "out-long"), id_field="id", batch_size=1,
                                  max_run_time_seconds=1)
    started = time.monotonic()
    state = batch_infer(too_long, return_state=True)
    info = get_run(BATCH, str(state.state_details.flow_run_id))
    assert info.status == "FAIL BATCH INFERENCE" and "max run time of 1 s" in info.cause
    assert time.monotonic() - started < 20  # the file alone takes over 40 s
    spec = BatchInferenceSpec(name="to-stop", model=str(models["slow"]), input_uri=str(slow), input_format="jsonl",
                              output_uri=str(tmp_path / "out-stop"), id_field="id", batch_size=1)
    box = {}
    thread = threading.Thread(target=lambda: box.update(state=batch_infer(spec, return_state=True)))
    thread.start()
    deadline = time.monotonic() + 60
    running = None
    while time.monotonic() < deadline and running is None:
        running = next((r for r in list_runs(BATCH, 5) if r.name == "to-stop" and r.status == "RUNNING"), None)
        time.sleep(0.2)
    assert running is not None
    stop_run(BATCH, running.id)
    thread.join(60)
    assert box["state"].is_cancelled() and get_run(BATCH, running.id).status == "STOPPED"
    assert not (tmp_path / "out-stop" / "s.jsonl.predictions.jsonl").exists()


def test_workers_as_flow_runs_of_the_worker_deployment(platform, models, tmp_path):
    """What the gpu pool does with a pod per worker, run through the local pool's real worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from mlyard.flows.batch_inference import batch_infer

    for i in range(2):
        _write(tmp_path / "in" / f"p{i}.jsonl", _rows(models["X"][i * 50:(i + 1) * 50], i * 50))
    spec = BatchInferenceSpec(name="pods", model=str(models["classifier"]), input_uri=str(tmp_path / "in"),
                              input_format="jsonl", output_uri=str(tmp_path / "out"), id_field="id", workers=2,
                              worker_deployment="batch-inference-worker/batch-inference-worker-local")
    result = batch_infer(spec)
    assert result.rows == 100 and result.failed_rows == 0
    assert [x["id"] for x in _predictions(tmp_path / "out" / "p1.jsonl.predictions.jsonl")] == [f"r{i}" for i in range(50, 100)]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["batch-inference-worker"])))
    mine = [r for r in runs if r.parameters["spec"]["batch_id"] == result.batch_id]
    assert len(mine) == 2 and all(r.state.is_completed() and r.work_pool_name == "local" for r in mine)


def test_json_and_csv_inputs_through_the_flow(platform, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer

    X = models["X"][:30]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text(json.dumps({"instances": _rows(X[:10])}))
    (tmp_path / "in" / "b.json").write_text(json.dumps(_rows(X[10:], 10)))
    result = batch_infer(BatchInferenceSpec(name="json-in", model=str(models["classifier"]), input_uri=str(tmp_path / "in"),
                                            input_format="json", output_uri=str(tmp_path / "out"), id_field="id"))
    assert (result.files, result.rows, result.failed_rows) == (2, 30, 0)
    assert [x["id"] for x in _predictions(tmp_path / "out" / "b.json.predictions.jsonl")] == [f"r{i}" for i in range(10, 30)]

    with open(tmp_path / "c.csv", "w") as fh:
        fh.write("id,a,b,c,d\n" + "".join(f"{i},{','.join(map(str, x))}\n" for i, x in enumerate(X)))
    result = batch_infer(BatchInferenceSpec(name="csv-in", model=str(models["regressor"]), input_uri=str(tmp_path / "c.csv"),
                                            input_format="csv", output_uri=str(tmp_path / "out-csv"), id_field="id"))
    got = [x["prediction"] for x in _predictions(tmp_path / "out-csv" / "c.csv.predictions.jsonl")]
    np.testing.assert_allclose(got, 3 * X[:, 0] - X[:, 2] + 10, rtol=1e-6)


def test_worker_processes_end_when_the_batch_inference_is_killed(platform, models, tmp_path):
    """Local workers run in their own process groups; killing the flow process must not leave them
    running (they would race the rerun). They end on their next event to the dead process's pipe."""
    rows = [{"id": i, "features": [1.0, 0.0]} for i in range(80_000)]  # about 3 MB: cut in two
    _write(tmp_path / "big.jsonl", rows)
    data = dict(name="orphans", model=str(models["slow"]), input_uri=str(tmp_path / "big.jsonl"), input_format="jsonl",
                output_uri=str(tmp_path / "out"), id_field="id", batch_size=2, workers=2)
    proc = subprocess.Popen([sys.executable, "-c", RUN_FLOW, json.dumps(data)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if entry.name.isdigit() and b"mlyard.tasks.inference" in cmd and any(b"/orphans.pid" in c for c in cmd):
                found.append(int(entry.name))
        return found

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(workers()) < 2:
        time.sleep(0.2)
    assert len(workers()) == 2, "two worker processes should have started"

    def writing(pid: int) -> bool:  # in its batch loop: its shard's output file is open
        try:
            return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".jsonl") and "/out-" in os.readlink(
                f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(writing(pid) for pid in workers()):
        time.sleep(0.1)
    assert all(writing(pid) for pid in workers()), "both workers should be inside their shards"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60  # they notice between batches, after loading the model
    while workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers() == []


def test_a_job_in_which_every_row_failed_fails_and_empty_files_are_reported(platform, models, tmp_path):
    from mlyard.flows.batch_inference import batch_infer
    from mlyard.runs import BATCH, get_run

    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "bad.jsonl", [{"id": i, "features": [-999.0, 0.0]} for i in range(6)])
    spec = BatchInferenceSpec(name="all-bad", model=str(models["slow"]), input_uri=str(tmp_path / "in"),
                              input_format="jsonl", output_uri=str(tmp_path / "out"), id_field="id")
    state = batch_infer(spec, return_state=True)
    assert state.is_failed() and "every one of the 6 rows failed" in state.message and "-999" in state.message
    assert get_run(BATCH, str(state.state_details.flow_run_id)).status == "FAIL BATCH INFERENCE"

    _write(tmp_path / "in" / "bad.jsonl", [{"id": 0, "features": [1.0, 0.0]}])
    (tmp_path / "in" / "empty.jsonl").write_text("")
    result = batch_infer(spec.model_copy(update={"name": "one-empty", "output_uri": str(tmp_path / "out2")}))
    assert result.rows == 1 and result.empty_files == ["empty.jsonl"]
