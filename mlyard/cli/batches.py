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
    ask,
    copied,
    emit,
    guard,
    run_or_submit,
    stop,
    typer_app,
)

app = typer_app("List, inspect, stop and copy batch inferences.")
LIMIT = typer.Option(50, help="At most this many, newest first.")


def batch(
    file: Path = typer.Option(..., "-f", "--file", help="Batch inference spec (YAML): model, input_uri, input_format, "
                              "output_uri; its fields: core/specs/batch.py."),
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
    rows = []
    for row in guard(lambda: ask("runs_list", kind=kind_name, limit=limit)):
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
    emit(guard(lambda: ask("batches_show", batch_id=batch_id)), as_json)


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
