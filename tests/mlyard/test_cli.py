"""The command line over the real stack: batch, batches, evaluate, evaluations (output as users see it)."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from mlyard.cli import app

runner = CliRunner()


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_batch_and_evaluation_commands(platform, models, tmp_path):
    rows = [{"id": i, "features": x.tolist(), "label": int(t)} for i, (x, t) in enumerate(zip(models["X"][:80], models["y"][:80]))]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    bad = _write(tmp_path / "bad.yaml", {"name": "Bad Name", "model": str(models["classifier"]), "input_uri": str(data),
                                         "input_format": "parquet", "output_uri": str(tmp_path / "o")})
    res = runner.invoke(app, ["batch", "-f", str(bad)])
    assert res.exit_code == 2 and "name:" in res.output and "input_format:" in res.output, res.output

    spec = _write(tmp_path / "batch.yaml", {"name": "cli-batch", "model": str(models["classifier"]), "input_uri": str(data),
                                            "input_format": "jsonl", "id_field": "id", "drop_fields": ["label"],
                                            "output_uri": str(tmp_path / "out")})
    res = runner.invoke(app, ["batch", "-f", str(spec), "--set", "batch_size=16", "--json"])
    assert res.exit_code == 0, res.output
    batch = json.loads(res.stdout[res.stdout.index("{"):])
    assert batch["rows"] == 80 and batch["failed_rows"] == 0
    res = runner.invoke(app, ["batches", "list", "--json"])
    assert any(r["id"] == batch["batch_id"] and r["status"] == "COMPLETE" for r in json.loads(res.stdout))
    res = runner.invoke(app, ["batches", "show", batch["batch_id"], "--json"])
    assert json.loads(res.stdout)["summary"]["rows"] == 80
    res = runner.invoke(app, ["batches", "copy", batch["batch_id"], "--set", f"output_uri={tmp_path / 'copy'}", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["rows"] == 80 and (tmp_path / "copy" / "data.jsonl.predictions.jsonl").exists()
    res = runner.invoke(app, ["batches", "list", "--json"])
    assert any(r["name"] == "cli-batch-copy" for r in json.loads(res.stdout))

    ids = []
    for name, model in (("cli-a", models["classifier"]), ("cli-b", models["slow"])):
        ev = _write(tmp_path / f"{name}.yaml", {"name": name, "model": str(model), "task": "classification",
                                                "input_uri": str(data), "input_format": "jsonl", "label_field": "label",
                                                "id_field": "id", "output_uri": str(tmp_path / f"out-{name}")})
        res = runner.invoke(app, ["evaluate", "-f", str(ev), "--json"])
        assert res.exit_code == 0, res.output
        ids.append(json.loads(res.stdout[res.stdout.index("{"):])["evaluation_id"])
    res = runner.invoke(app, ["evaluations", "compare", *ids, "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0 and "roc_auc" in res.output and "n/a" in res.output, res.output
    assert list((tmp_path / "cmp").glob("compare-*.png"))
    res = runner.invoke(app, ["evaluations", "show", ids[1], "--json"])
    assert "no class probabilities" in json.loads(res.stdout)["not_applicable"]["roc_auc"]
    res = runner.invoke(app, ["evaluations", "delete", ids[1]])
    assert res.exit_code == 0
    res = runner.invoke(app, ["evaluations", "show", ids[1]])
    assert res.exit_code == 2 and "not found" in res.output
