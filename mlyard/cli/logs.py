"""`mlyard logs`: the structured records of trainings, tunings, batch inferences, evaluations, endpoints
and inference requests, by category, id, level and time (mlyard/logs.py)."""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, ask, guard, out


def _line(doc: dict[str, Any]) -> str:
    who = doc.get("name") or next((doc[k] for k in ("trainingId", "hyperparameterTuningId", "batchInferenceId",
                                                    "evaluationId", "endpointId") if doc.get(k)), "")
    extra = f" [{doc['inferenceId'][:12]}]" if doc.get("inferenceId") else ""
    return (f"{doc['time']} {doc['logLevel']:<7} {doc['category'].removeprefix('mlyard.'):<10} "
            f"{str(who)[:24]:<24}{extra} {doc['body']}")


def logs(
    category: Optional[str] = typer.Option(None, "--category", "-c", help="training, tuning, batch, evaluation, "
                                           "endpoint, inference, rag, pipeline or notebook."),
    training: Optional[str] = typer.Option(None, "--training", help="A training's id (or its start)."),
    tuning: Optional[str] = typer.Option(None, "--tuning", help="A hyperparameter tuning's id (or its start)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="A batch inference's id (or its start)."),
    evaluation: Optional[str] = typer.Option(None, "--evaluation", help="A model evaluation's id (or its start)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="An endpoint's name or id."),
    stage: Optional[str] = typer.Option(None, "--stage", help="An endpoint stage's id."),
    inference: Optional[str] = typer.Option(None, "--inference", help="One inference request's id (or its start)."),
    run: Optional[str] = typer.Option(None, "--run", help="The Prefect flow run that wrote them (or its start)."),
    level: Optional[str] = typer.Option(None, "--level", "-l", help="INFO, WARNING or ERROR: that level and above."),
    since: Optional[str] = typer.Option(None, "--since", help="30m, 1h, 7d ago, or an ISO-8601 time."),
    until: Optional[str] = typer.Option(None, "--until", help="30m, 1h, 7d ago, or an ISO-8601 time."),
    limit: int = typer.Option(100, "--limit", "-n", help="The latest N records (at most 10,000)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records as they are written "
                                                             "(Ctrl-C ends it)."),
    as_json: bool = JSON,
) -> None:
    """Structured log records, oldest first: the latest --limit that match every filter given. Ids may be
    cut to their start (as `trainings show` prints them). With --json, one JSON object per line (the
    console's log fields: category, logLevel, body, logType, time and the ids).

    Examples: `mlyard logs --category inference --endpoint digits --since 1h`,
    `mlyard logs --training 3f2a --level WARNING`, `mlyard logs -c training -f`."""
    filters: dict[str, Any] = {k: v for k, v in (("category", category), ("training", training), ("tuning", tuning),
                                                 ("batch", batch), ("evaluation", evaluation), ("endpoint", endpoint),
                                                 ("stage", stage), ("inference", inference), ("run", run),
                                                 ("level", level), ("since", since), ("until", until)) if v}

    def show(docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            if as_json:
                print(json.dumps(doc), flush=True)
            else:
                out.print(_line(doc), highlight=False, markup=False, soft_wrap=True)

    docs = guard(lambda: ask("logs", limit=limit, **filters))
    show(docs)
    if not docs and not follow and not as_json:
        out.print("no log records match", highlight=False)
    if not follow:
        return
    if docs:
        last = docs[-1]["seq"]
    else:  # from the latest record of any kind on
        latest = guard(lambda: ask("logs", limit=1))
        last = latest[-1]["seq"] if latest else 0
    try:
        while True:
            time.sleep(1.0)
            new = guard(functools.partial(ask, "logs", after=last, limit=1000, **filters))
            show(new)
            if new:
                last = new[-1]["seq"]
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
