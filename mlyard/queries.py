"""What the CLI reads (every list and show, and the registry check before a batch or an evaluation
starts), as plain functions that return JSON-ready data, answered by the warm mlyard API when the
stack runs one, else here.

    from mlyard.queries import ask
    ask("trainings_list", limit=10)                  # [{"id": ..., "status": "COMPLETE", ...}, ...]

Why a warm process: importing Prefect's client and MLflow (and MLflow's first look at its database)
costs 3-5 s in every fresh process, before a single row is read; the API process that `mlyard up`
starts (mlyard/service.py) has paid that once, so a `list` or `show` answers in well under 1.5 s. The
answers are the same either way: the API runs these same functions. Errors cross the wire as the
same mlyard error class with the same message.

Each query imports what it needs when it runs, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from functools import lru_cache
from typing import Any, Callable

from core import errors
from core.errors import MlyardError

QUERY_TIMEOUT_SECONDS = 120.0


@lru_cache(maxsize=1)
def platform():
    """One Platform per process: in the API its MLflow and catalog clients stay warm between queries."""
    from core.connection import connect
    from flows.platform import Platform

    return Platform(connect())


def _connected():
    from core.connection import connect

    return connect()


# -- the queries ------------------------------------------------------------------------------------

def trainings_list(limit: int = 50, experiment: str | None = None) -> list[dict[str, Any]]:
    from mlyard.trainings import list_trainings

    _connected()
    return [t.as_dict() for t in list_trainings(limit, experiment)]


def trainings_show(training_id: str) -> dict[str, Any]:
    from core.links import links
    from mlyard.trainings import get_training

    p = platform()
    info = get_training(training_id).as_dict()
    training_id = info["id"]  # the whole id, when a prefix of it was given
    run = p.tracking.find_training_run(training_id)
    if run is not None:
        info["mlflow_run_id"] = run.run_id
        info["metrics"] = run.metrics
        info["artifact_uri"] = run.artifact_uri
    info["links"] = links(p.settings, training_id, run.run_id if run else None, run.experiment_id if run else None)
    return info


def tunings_list(limit: int = 50) -> list[dict[str, Any]]:
    from mlyard.tunings import list_tunings

    _connected()
    return [t.as_dict() for t in list_tunings(limit)]


def tunings_show(tuning_id: str) -> dict[str, Any]:
    from core.links import links
    from mlyard.tunings import best_trial, get_tuning, trials

    settings = _connected()
    info = get_tuning(tuning_id).as_dict()
    tuning_id = info["id"]
    rows = trials(settings.catalog_db_url, tuning_id)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    info["trials"] = counts
    info["best_trial"] = best_trial(rows, info["spec"].get("objective", {}).get("direction", "maximize"))
    info["links"] = links(settings, tuning_id)
    return info


def tunings_trials(tuning_id: str) -> list[dict[str, Any]]:
    from mlyard.tunings import get_tuning, trials

    settings = _connected()
    return trials(settings.catalog_db_url, get_tuning(tuning_id).id)


def runs_list(kind: str, limit: int = 50) -> list[dict[str, Any]]:
    """Runs of a kind (BATCH, EVALUATION: a name in mlyard.runs), newest first."""
    from mlyard import runs

    if kind not in ("BATCH", "EVALUATION"):
        raise errors.SpecError("kind", kind, "BATCH or EVALUATION")
    _connected()
    return [r.as_dict() for r in runs.list_runs(getattr(runs, kind), limit)]


def batches_show(batch_id: str) -> dict[str, Any]:
    from core.links import links
    from core.names import TAG_BATCH_ID
    from mlyard.runs import BATCH, get_run

    p = platform()
    info = get_run(BATCH, batch_id).as_dict()
    batch_id = info["id"]
    run_id = p.tracking.find_run({TAG_BATCH_ID: batch_id})
    run = p.tracking.get_run(run_id) if run_id else None
    if run is not None:
        info["mlflow_run_id"] = run.run_id
        info["summary"] = {k: (int(v) if float(v).is_integer() else v) for k, v in run.metrics.items()}
    info["links"] = links(p.settings, batch_id, run.run_id if run else None, run.experiment_id if run else None)
    return info


def evaluations_show(evaluation_id: str) -> dict[str, Any]:
    from core.links import links
    from mlyard import evaluations

    p = platform()
    info = evaluations.show(p.tracking, evaluation_id)
    info["links"] = links(p.settings, info.get("id") or evaluation_id, info.get("mlflow_run_id"), info.get("experiment_id"))
    return info


def experiments_list() -> list[dict[str, Any]]:
    return [e.as_dict() for e in platform().experiments.list()]


def templates_list() -> list[dict[str, Any]]:
    return [t.as_dict() for t in platform().templates.list()]


def templates_show(name: str) -> dict[str, Any]:
    return platform().templates.get(name).as_dict()


def models_list() -> list[dict[str, Any]]:
    return [m.as_dict() for m in platform().models.list()]


def models_show(ref: str) -> dict[str, Any]:
    """A model with all its versions (`name`), or one version (`name/version`, `name@alias`)."""
    from core.links import model_links

    p = platform()
    found = (p.models.resolve(ref) if "/" in ref or "@" in ref else p.models.get(ref)).as_dict()
    if "versions" in found:
        for v in found["versions"]:
            v["links"] = model_links(p.settings, found["name"], v["version"], v.get("lineage"))
        found["links"] = model_links(p.settings, found["name"])
    else:
        found["links"] = model_links(p.settings, found["name"], found["version"], found.get("lineage"))
    return found


def model_reference(model: str) -> dict[str, Any]:
    """The `model` field of a batch inference or an evaluation as a pinned URI (an alias resolved to
    its version) and the registered version's framework; SpecError, naming the field, when it does
    not exist."""
    from core.specs import is_registry_ref
    from tasks import checks

    p = platform()
    registered = is_registry_ref(model) or model.startswith("models:/")
    uri = checks.model_reference(p.storage, p.models if registered else None, model)
    version = p.models.resolve(uri.removeprefix("models:/")) if registered else None
    return {"uri": uri, "framework": version.framework if version else None,
            "parameters": version.parameters if version else {}, "runtime": version.runtime if version else "",
            "source": version.source if version else None}


def pipeline_runs_list(limit: int = 100) -> list[dict[str, Any]]:
    from mlyard import pipelines

    return pipelines.list_runs(limit)


def pipeline_runs_show(run_id: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.show_run(run_id)


def pipeline_runs_graph(run_id: str) -> dict[str, Any]:
    """The run's DAG with each step's state (drawing it to a file is the command's own: `--out`)."""
    from mlyard import pipelines

    return pipelines.run_graph(run_id)


def rags_list() -> list[dict[str, Any]]:
    from mlyard import rags

    return rags.list_rags()


def rags_show(name: str) -> dict[str, Any]:
    from mlyard import rags

    return rags.show(name)


def rags_history(name: str, limit: int = 100) -> list[dict[str, Any]]:
    from mlyard import rags

    return rags.history(name, limit)


def rags_logs(name: str, tail: int = 20) -> list[dict[str, Any]]:
    from mlyard import rags

    return rags.logs(name, tail)


def schedules_list() -> list[dict[str, Any]]:
    from mlyard import schedules

    return schedules.list_schedules()


def schedules_show(name: str, runs: int = 10) -> dict[str, Any]:
    from mlyard import schedules

    return schedules.show(name, runs=runs)


def endpoints_list() -> list[dict[str, Any]]:
    from mlyard import endpoints

    return endpoints.list_endpoints()


def endpoints_show(endpoint: str) -> dict[str, Any]:
    from mlyard import endpoints

    return endpoints.show(endpoint)


def pipelines_list() -> list[dict[str, Any]]:
    from mlyard import pipelines

    return pipelines.list_pipelines()


def pipelines_show(name: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.show(name)


def notebooks_list() -> list[dict[str, Any]]:
    from mlyard import notebooks

    return notebooks.list_notebooks()


def notebooks_show(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.show(name)


def dashboard(since: str = "24h") -> dict[str, Any]:
    from mlyard import dashboard as board

    return board.collect(since)


def logs(**filters: Any) -> list[dict[str, Any]]:
    from mlyard import logs as records

    return records.query(**filters)


QUERIES: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    trainings_list, trainings_show, tunings_list, tunings_show, tunings_trials, runs_list, batches_show,
    evaluations_show, experiments_list, templates_list, templates_show, models_list, models_show, model_reference,
    pipeline_runs_list, pipeline_runs_show, pipeline_runs_graph, rags_list, rags_show, rags_history, rags_logs,
    schedules_list, schedules_show, endpoints_list, endpoints_show, pipelines_list, pipelines_show, notebooks_list,
    notebooks_show, dashboard, logs)}


# -- asking -----------------------------------------------------------------------------------------

def ask(query: str, /, **kwargs: Any) -> Any:
    """The answer of `query`: from the stack's warm mlyard API when one runs, else computed here."""
    url = api_url()
    if url is not None:
        try:
            return _remote(url, query, kwargs)
        except Unreachable:
            pass  # stopped since `up` (or never started): the same answer, computed here
    return json.loads(json.dumps(QUERIES[query](**kwargs), default=str))


def api_url() -> str | None:
    """The mlyard API of this home's running stack (None with a production Prefect server, or when
    `mlyard up` started none). Only files are read: no engine is imported or asked."""
    from core.connection import read_state
    from core.settings import Settings

    settings = Settings()
    if settings.prefect_api_url or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return None
    state = read_state(settings)
    if state is None or not state.service_url:
        return None
    pid = state.pids.get("mlyard-api")
    if pid is None or not os.path.exists(f"/proc/{pid}"):
        return None
    return state.service_url


class Unreachable(Exception):
    """Nothing answers at the mlyard API's address: the caller computes (or queues) it itself."""


def _remote(url: str, name: str, kwargs: dict[str, Any]) -> Any:
    return post(url, f"/v1/queries/{name}", kwargs)


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    """POST `body` as JSON to the mlyard API at `url`: its JSON answer, or its error raised as the same
    mlyard class; Unreachable when nothing answers there (the API stopped since `up`)."""
    from core.connection import internal_headers
    from core.settings import Settings

    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **internal_headers(Settings())})
    try:
        with urllib.request.urlopen(req, timeout=QUERY_TIMEOUT_SECONDS) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            problem = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise MlyardError(f"the mlyard API at {url} answered {exc.code}: {raw[:300]!r}") from None
        raise as_error(problem) from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise Unreachable(str(exc)) from exc


def error_body(exc: BaseException) -> dict[str, Any]:
    """How the API sends an error: its mlyard class and message (and the HTTP status it carries)."""
    if isinstance(exc, MlyardError):
        return {"error": {"type": type(exc).__name__, "message": str(exc), "status": exc.http_status}}
    return {"error": {"type": "MlyardError", "message": f"the mlyard API failed: {type(exc).__name__}: {exc}",
                      "status": 500}}


def as_error(problem: dict[str, Any]) -> MlyardError:
    """The error the API sent, as the same mlyard class with the same message."""
    cls = getattr(errors, str(problem.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, MlyardError)):
        cls = MlyardError
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(problem.get("message")))
    return exc
