"""`mlyard batch` and `mlyard batches ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import (
    JSON,
    POOL,
    SETS,
    SUBMIT,
    connected,
    copied,
    emit,
    guard,
    platform,
    run_or_submit,
    stop,
    typer_app,
)

app = typer_app("List, inspect, stop and copy batch inferences.")
LIMIT = typer.Option(50, help="At most this many, newest first.")


def batch(
    file: Path = typer.Option(..., "-f", "--file", help="Batch inference spec (YAML): model, input_uri, input_format, "
                              "output_uri; its fields: mlyard/specs/batch.py."),
    sets: Optional[list[str]] = SETS,
    submit: bool = SUBMIT,
    pool: str = POOL,
    as_json: bool = JSON,
) -> None:
    """Run a batch inference: predictions for every row of the input files, one output file per input file.

    Rerunning a stopped or failed batch inference with the same spec and output_uri resumes it:
    finished shards are kept, the rest run again.
    """
    guard(lambda: run_or_submit("BATCH", file, sets, submit, pool, as_json, "batches show"))


def list_kind(kind_name: str, limit: int, as_json: bool, empty: str) -> None:
    """Runs of a kind (a name in mlyard.runs) with their model and status."""
    def go():
        from mlyard import runs

        connected()
        return runs.list_runs(getattr(runs, kind_name), limit)

    rows = []
    for r in guard(go):
        row = r.as_dict()
        spec = row.pop("spec")
        rows.append({**row, "model": spec.get("model")})
    emit(rows, as_json, ["id", "name", "model", "status", "run_seconds", "created_at", "cause"], empty=empty)


@app.command("list")
def batches_list(limit: int = LIMIT, as_json: bool = JSON) -> None:
    """Batch inferences with their status and how long they ran (an evaluation's own batch included)."""
    list_kind("BATCH", limit, as_json, "no batch inferences yet: start one with `mlyard batch -f batch.yaml`")


@app.command("show")
def batches_show(batch_id: str, as_json: bool = JSON) -> None:
    """One batch inference: status, cause of a failure, its summary (rows, failed rows, rows/s) and links."""
    def go():
        from mlyard.links import links
        from mlyard.names import TAG_BATCH_ID
        from mlyard.runs import BATCH, get_run

        p = platform()
        info = get_run(BATCH, batch_id).as_dict()
        run_id = p.tracking.find_run({TAG_BATCH_ID: batch_id})
        run = p.tracking.get_run(run_id) if run_id else None
        if run is not None:
            info["mlflow_run_id"] = run.run_id
            info["summary"] = {k: (int(v) if float(v).is_integer() else v) for k, v in run.metrics.items()}
        info["links"] = links(p.settings, batch_id, run.run_id if run else None, run.experiment_id if run else None)
        return info

    emit(guard(go), as_json)


@app.command("stop")
def batches_stop(batch_id: str, as_json: bool = JSON) -> None:
    """Stop a batch inference: its workers end; finished shards are kept (rerun the spec to resume)."""
    stop("BATCH", batch_id, as_json)


@app.command("copy")
def batches_copy(batch_id: str, name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                 sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, pool: str = POOL,
                 as_json: bool = JSON) -> None:
    """Start a new batch inference with the same spec (give a new output_uri, or the same one to resume)."""
    guard(lambda: run_or_submit("BATCH", copied("BATCH", batch_id, name), sets, submit, pool, as_json, "batches show"))
