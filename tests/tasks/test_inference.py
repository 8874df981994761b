"""The batch inference parts on their own: globs, readers, shard planning, the worker loop with a real
MLflow model (timeouts and failures included). Storage is local here; S3 is in tests/flows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlyard.core.errors import BadRecord, BatchFailed, SpecError
from mlyard.core.specs import BatchJob, BatchShard
from mlyard.tasks.inference import Model, Worker
from mlyard.tasks.outputs import Layout
from mlyard.tasks.records import read_records
from mlyard.tasks.shards import assign, plan, select_files
from mlyard.tasks.storage import Storage


@pytest.fixture()
def storage(settings):
    return Storage(settings)


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_include_and_exclude_globs_exclude_wins(storage, tmp_path):
    for name in ("a.jsonl", "b.jsonl", "skip-c.jsonl", "d.csv", "day=1/e.jsonl", "day=2/f.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    files = select_files(storage, str(tmp_path), ["**/*.jsonl"], ["skip-*", "day=2/**"])
    assert [n for n, _ in files] == ["a.jsonl", "b.jsonl", "day=1/e.jsonl"]
    assert files[0][1] == f"{tmp_path}/a.jsonl"
    with pytest.raises(SpecError) as err:
        select_files(storage, str(tmp_path), ["*.parquet"], [])
    assert "include/exclude" in str(err.value) and "a.jsonl" in str(err.value)


def test_each_input_format_streams_records_with_row_numbers(tmp_path):
    rows = [{"id": i, "x": [i, i + 1]} for i in range(5)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n\n" + "not json\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))
    got = list(read_records(jsonl, "jsonl"))
    assert [r for r, _, _ in got] == [0, 2, 3, 4, 5, 6]  # line numbers; the blank line is skipped but counted
    assert isinstance(got[1][1], BadRecord) and got[2][1] == rows[1]

    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "inst.json").write_text(json.dumps({"instances": rows}))
    for name in ("list.json", "inst.json"):
        assert [(r, rec) for r, rec, _ in read_records(tmp_path / name, "json")] == list(enumerate(rows))
    (tmp_path / "bad.json").write_text('"just a string"')
    with pytest.raises(SpecError, match="list of records"):
        list(read_records(tmp_path / "bad.json", "json"))

    (tmp_path / "a.csv").write_text("id,x,name\n1,0.5,a\n2,,b\n3,7\n")
    got = list(read_records(tmp_path / "a.csv", "csv"))
    assert got[0][1] == {"id": 1, "x": 0.5, "name": "a"} and got[1][1] == {"id": 2, "x": None, "name": "b"}
    assert isinstance(got[2][1], BadRecord) and "3 columns" in str(got[2][1])


def test_plan_cuts_a_big_jsonl_file_so_every_row_is_read_exactly_once(tmp_path, monkeypatch):
    import mlyard.tasks.shards as shards_mod

    monkeypatch.setattr(shards_mod, "MIN_SPLIT_BYTES", 1000)
    path = _write_jsonl(tmp_path / "big.jsonl", [{"id": i, "pad": "x" * (i % 17)} for i in range(5000)])
    small = _write_jsonl(tmp_path / "small.jsonl", [{"id": 0}])
    shards = plan([("big.jsonl", path), ("small.jsonl", small)], "jsonl", workers=3)
    big = [s for s in shards if s.file == "big.jsonl"]
    assert len(big) == 3 and [s.index for s in big] == [0, 1, 2] and all(s.count == 3 for s in big)
    assert sum(s.size for s in big) == path.stat().st_size
    seen = [(row, rec["id"]) for s in big for row, rec, _ in read_records(path, "jsonl", s.start, s.end, s.first_row)]
    assert seen == [(i, i) for i in range(5000)]
    groups = assign(shards, 3)
    assert sorted(s.key for g in groups for s in g) == sorted(s.key for s in shards)


def _job(tmp_path, model, files, **kw) -> BatchJob:
    shards = plan([(n, p) for n, p in files], kw.pop("input_format", "jsonl"), 1)
    return BatchJob(batch_id="local-test", model_uri=str(model), output_uri=str(tmp_path / "out"),
                    input_format=kw.pop("fmt", "jsonl"), batch_size=kw.pop("batch_size", 4),
                    inference_timeout_seconds=kw.pop("timeout", 5), max_failed_batches=kw.pop("max_failed_batches", 5),
                    output_probabilities=kw.pop("proba", True), id_field="id", shards=shards,
                    inputs={n: str(p) for n, p in files}, scratch=str(tmp_path), **kw)


def test_worker_writes_predictions_aligned_to_rows_equal_to_the_model(storage, models, tmp_path):
    X = models["X"][:10]
    path = _write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"r{i}", "features": x.tolist()} for i, x in enumerate(X)])
    records = Worker(_job(tmp_path, models["classifier"], [("a.jsonl", path)]), storage).run()
    assert records[0].rows == 10 and records[0].failed_rows == 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "a.jsonl.predictions.jsonl").read_text().splitlines()]
    import mlflow.sklearn

    sk = mlflow.sklearn.load_model(str(models["classifier"]))
    assert [x["row"] for x in lines] == list(range(10)) and [x["id"] for x in lines] == [f"r{i}" for i in range(10)]
    assert [x["prediction"] for x in lines] == sk.predict(X).tolist()
    np.testing.assert_allclose([x["probabilities"] for x in lines], sk.predict_proba(X))
    # the shard's record is committed after its output, under output_uri
    assert (tmp_path / "out" / "_mlyard" / "shards").is_dir()


def test_named_fields_become_dataframe_columns_and_drop_fields_never_reach_the_model(storage, models, tmp_path):
    rows = [{"id": i, "a": x[0], "b": x[1], "c": x[2], "d": x[3], "label": 1} for i, x in enumerate(models["X"][:6])]
    path = _write_jsonl(tmp_path / "in" / "n.jsonl", rows)
    Worker(_job(tmp_path, models["regressor"], [("n.jsonl", path)], drop_fields=["label"]), storage).run()
    lines = [json.loads(x) for x in (tmp_path / "out" / "n.jsonl.predictions.jsonl").read_text().splitlines()]
    expected = 3 * models["X"][:6, 0] - models["X"][:6, 2] + 10
    np.testing.assert_allclose([x["prediction"] for x in lines], expected, rtol=1e-6)
    assert "probabilities" not in lines[0]  # a regressor has no predict_proba


def test_a_batch_that_times_out_or_raises_is_recorded_and_the_job_goes_on(storage, models, tmp_path):
    rows = [{"id": i, "features": [float(i + 1), 0.0]} for i in range(12)]
    rows[5]["features"][0] = 999.0  # batch 2 (rows 4-7) sleeps 30 s
    rows[9]["features"][0] = -999.0  # batch 3 (rows 8-11) raises
    path = _write_jsonl(tmp_path / "in" / "t.jsonl", rows)
    events = []
    job = _job(tmp_path, models["slow"], [("t.jsonl", path)], timeout=0.5)
    import time

    started = time.monotonic()
    rec = Worker(job, storage, emit=events.append).run()[0]
    assert time.monotonic() - started < 20  # did not wait for the stuck call's 30 s (12.3 s seen on a busy 2-core run)
    assert (rec.rows, rec.failed_rows, rec.failed_batches) == (12, 8, 2)
    assert [(f["first_row"], f["last_row"]) for f in rec.failures] == [(4, 7), (8, 11)]
    assert "timed out after 0.5 s" in rec.failures[0]["error"] and "cannot score -999" in rec.failures[1]["error"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "t.jsonl.predictions.jsonl").read_text().splitlines()]
    assert [x["row"] for x in lines] == list(range(12))
    assert [("error" in x) for x in lines] == [False] * 4 + [True] * 8
    assert sum(e["event"] == "failure" for e in events) == 2


def test_more_failed_batches_than_allowed_stops_the_worker(storage, models, tmp_path):
    rows = [{"id": i, "features": [-999.0, 0.0]} for i in range(12)]
    path = _write_jsonl(tmp_path / "in" / "f.jsonl", rows)
    with pytest.raises(BatchFailed, match="2 batches failed .max_failed_batches is 1"):
        Worker(_job(tmp_path, models["slow"], [("f.jsonl", path)], max_failed_batches=1), storage).run()
    # nothing that looks complete is left: no output file, no shard record
    assert not (tmp_path / "out" / "f.jsonl.predictions.jsonl").exists()
    assert not (tmp_path / "out" / "_mlyard").exists()


def test_model_knows_its_classes_and_layout_names(models):
    m = Model(str(models["classifier"]))
    assert m.has_proba and m.classes == ["0", "1", "2"]
    assert not Model(str(models["regressor"])).has_proba
    layout = Layout("s3://b/out")
    shard = BatchShard(file="day=1/a.jsonl", index=1, count=3)
    assert layout.output("day=1/a.jsonl") == "s3://b/out/day=1/a.jsonl.predictions.jsonl"
    assert layout.target(shard) == "s3://b/out/_mlyard/parts/day=1/a.jsonl.2-of-3.jsonl"
    assert layout.record(shard).startswith("s3://b/out/_mlyard/shards/") and "/" not in layout.record(shard)[27:]
