"""`mlyard predict`: send a file of rows to a model server and write its predictions."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from mlyard.cli.common import err, guard
from mlyard.core.errors import MlyardError, SpecError


def predict(
    file: Path = typer.Argument(..., help="Rows to predict: JSONL (one row per line), a JSON list, or CSV with a header."),
    url: str = typer.Option(..., "--url", help="The model's route: .../v1/models/NAME:predict (OIP v1) or "
                            ".../v2/models/NAME/infer (OIP v2)."),
    field: Optional[str] = typer.Option(None, "--field", help="The field of JSON rows that holds the feature vector "
                                        "(default: a row that is a list is the vector; an object is sent as it is)."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="A field copied to the output and not sent."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Ask a classifier for its class probabilities."),
    batch_size: int = typer.Option(100, help="Rows per request."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write JSONL here (default: standard output)."),
) -> None:
    """Predict every row of FILE with a running model server (mlyard serve, KServe, Triton, ...); one JSON line
    per row: {"row", "id"?, "prediction"} (and "probabilities" with --probabilities on OIP v2)."""
    def go() -> int:
        if batch_size < 1:
            raise SpecError("--batch-size", batch_size, "at least 1")
        fmt = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}.get(file.suffix.lower())
        if fmt is None:
            raise SpecError("FILE", str(file), "a .jsonl, .json or .csv file")
        if not file.is_file():
            raise SpecError("FILE", str(file), "a file that exists")
        v2 = url.rstrip("/").endswith("/infer")
        if not v2 and not (url.endswith(":predict") or url.rstrip("/").endswith("/predict")):
            raise SpecError("--url", url, "a predict route (.../v1/models/NAME:predict) or an infer route "
                            "(.../v2/models/NAME/infer)")
        sink = open(output, "w") if output else sys.stdout
        n = 0
        try:
            for rows in _batches(file, fmt, field, id_field, batch_size):
                for line in _ask(url, v2, rows, probabilities):
                    sink.write(json.dumps(line) + "\n")
                    n += 1
        finally:
            if output:
                sink.close()
        return n

    n = guard(go)
    if output:
        err.print(f"{n} predictions -> {output}")


def _batches(file: Path, fmt: str, field: str | None, id_field: str | None,
             size: int) -> Iterator[list[tuple[int, Any, Any]]]:
    from mlyard.tasks.records import read_records

    batch: list[tuple[int, Any, Any]] = []
    for row, record, _ in read_records(file, fmt):
        if isinstance(record, Exception):
            raise SpecError("FILE", f"{file.name} row {row}", str(record))
        ident = record.get(id_field) if id_field and isinstance(record, dict) else None
        if field is not None:
            if not isinstance(record, dict) or field not in record:
                raise SpecError("--field", field, f"a field of every row; row {row} has none")
            features = record[field]
        elif isinstance(record, dict):
            features = {k: v for k, v in record.items() if k != id_field}
            if len(features) == 1 and isinstance(next(iter(features.values())), list):
                features = next(iter(features.values()))
        else:
            features = record
        batch.append((row, ident, features))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ask(url: str, v2: bool, rows: list[tuple[int, Any, Any]], probabilities: bool) -> list[dict[str, Any]]:
    features = [f for _, _, f in rows]
    if v2:
        if not all(isinstance(f, list) for f in features):
            raise SpecError("FILE", "rows with named fields", "vectors for OIP v2 (use a v1 route for named fields)")
        width = len(features[0])
        body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(features), width], "datatype": "FP64",
                                            "data": features}],
                                "outputs": [{"name": "predict"}] + ([{"name": "predict_proba"}] if probabilities else [])}
    else:
        body = {"instances": features}
        if probabilities:
            body["parameters"] = {"probabilities": True}
    answer = _post(url, body)
    if v2:
        outs = {o["name"]: o for o in answer.get("outputs", [])}
        preds = outs["predict"]["data"]
        probs = outs.get("predict_proba")
        k = probs["shape"][1] if probs else 0
        lines = [{"row": r, **({"id": i} if i is not None else {}), "prediction": preds[j],
                  **({"probabilities": probs["data"][j * k:(j + 1) * k]} if probs else {})}
                 for j, (r, i, _) in enumerate(rows)]
    else:
        preds = answer["predictions"]
        key = "probabilities" if probabilities else "prediction"
        lines = [{"row": r, **({"id": i} if i is not None else {}), key: preds[j]} for j, (r, i, _) in enumerate(rows)]
    return lines


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw).get("error", raw[:300])
        except (ValueError, AttributeError):
            message = raw[:300].decode(errors="replace")
        raise MlyardError(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MlyardError(f"{url} did not answer ({getattr(exc, 'reason', exc)}); is the server running?") from None
