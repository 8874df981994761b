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

from typing import Any, Callable

from mlyard import member_runs, models, teams
from mlyard.core import errors
from mlyard.core.access import current
from mlyard.warm_api import answer, platform


def _connected():
    from mlyard.core.connection import connect

    return connect()


# -- the queries ------------------------------------------------------------------------------------

def trainings_list(limit: int = 50, experiment: str | None = None) -> list[dict[str, Any]]:
    from mlyard.trainings import list_trainings

    _connected()
    return [t.as_dict() for t in list_trainings(limit, experiment)]


def trainings_show(training_id: str) -> dict[str, Any]:
    from mlyard.core.links import links
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
    if run is not None and p.tracking.has_artifacts(run.run_id, "tensorboard"):  # it wrote EM_TENSORBOARD_LOG_DIR
        info["links"]["tensorboard"] = f"mlyard trainings tensorboard {training_id[:8]}"
    return info


def tunings_list(limit: int = 50) -> list[dict[str, Any]]:
    from mlyard.tunings import list_tunings

    _connected()
    return [t.as_dict() for t in list_tunings(limit)]


def tunings_show(tuning_id: str) -> dict[str, Any]:
    from mlyard.core.links import links
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
    from mlyard.core.links import links
    from mlyard.core.names import TAG_BATCH_ID
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
    from mlyard import evaluations
    from mlyard.core.links import links

    p = platform()
    info = evaluations.show(p.tracking, evaluation_id)
    info["links"] = links(p.settings, info.get("id") or evaluation_id, info.get("mlflow_run_id"), info.get("experiment_id"))
    return info


def experiments_list() -> list[dict[str, Any]]:
    """The experiments of the caller's projects (each made as the project's whose run made it)."""
    from mlyard.runs import visible_projects

    return [e.as_dict() for e in platform().experiments.list(visible_projects())]


def templates_list() -> list[dict[str, Any]]:
    from mlyard.runs import visible_projects

    return [t.as_dict() for t in platform().templates.list(visible_projects())]


def templates_show(name: str) -> dict[str, Any]:
    return visible_template(platform().templates, name).as_dict()


def visible_template(templates: Any, name: str) -> Any:
    """The template `name` when its project is one this call sees, else TemplateNotFound (as if not there)."""
    from mlyard.core.errors import TemplateNotFound
    from mlyard.runs import visible_projects

    found, projects = templates.get(name), visible_projects()
    if projects is not None and found.project not in projects:
        raise TemplateNotFound(name)
    return found


def images_catalog():
    """The catalog's images and accounts, their Secrets where settings keep them (without loading MLflow);
    mlyard/commands.py writes through it too."""
    from mlyard.tasks.registry_secrets import images

    return images(_connected())


def images_list(kind: str | None = None) -> list[dict[str, Any]]:
    from mlyard.runs import visible_projects

    return [i.as_dict() for i in images_catalog().list_images(kind, visible_projects())]


def image_in_reach(name: str, role: str = "viewer", action: str = "reading an image") -> Any:
    """The image `name` when the caller's role in its project allows `action` (another project's does not exist)."""
    from mlyard.core.errors import ImageNotFound

    info = images_catalog().get_image(name)
    current().need(info.project, role, action, lambda: ImageNotFound(name))
    return info


def account_in_reach(name: str, role: str = "viewer", action: str = "reading a registry account") -> Any:
    from mlyard.core.errors import RegistryAccountNotFound

    info = images_catalog().get_account(name)
    current().need(info.project, role, action, lambda: RegistryAccountNotFound(name))
    return info


def images_show(name: str) -> dict[str, Any]:
    return image_in_reach(name).as_dict()


def accounts_list() -> list[dict[str, Any]]:
    from mlyard.runs import visible_projects

    return [a.as_dict() for a in images_catalog().list_accounts(visible_projects())]


def accounts_show(name: str) -> dict[str, Any]:
    return account_in_reach(name).as_dict()


def models_list() -> list[dict[str, Any]]:
    from mlyard.runs import visible_projects

    return [m.as_dict() for m in platform().models.list(visible_projects())]


def models_show(ref: str) -> dict[str, Any]:
    """A model with all its versions (`name`), or one version (`name/version`, `name@alias`)."""
    from mlyard.core.links import model_links
    from mlyard.models import visible

    p = platform()
    visible(p.models, ref.split("@", 1)[0].split("/", 1)[0])  # another project's: ModelNotFound
    found = (p.models.resolve(ref) if "/" in ref or "@" in ref else p.models.get(ref)).as_dict()
    if "versions" in found:
        for v in found["versions"]:
            v["links"] = model_links(p.settings, found["name"], v["version"], v.get("lineage"))
        found["links"] = model_links(p.settings, found["name"])
    else:
        found["links"] = model_links(p.settings, found["name"], found["version"], found.get("lineage"))
    return found


def model_reference(model: str) -> dict[str, Any]:
    from mlyard.api import model_reference as reference

    return reference(model)


def pipeline_runs_list(limit: int = 100) -> list[dict[str, Any]]:
    from mlyard import pipelines

    return pipelines.list_runs(limit)


def pipeline_runs_show(run_id: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.show_run(run_id)


def pipeline_runs_graph(run_id: str) -> dict[str, Any]:
    """The run's DAG with each step's state (drawing it to a file is the command's own: `--out`)."""
    from mlyard import pipelines

    return pipelines.run_graph_view(run_id)


def pipeline_runs_files(run_id: str, task: str | None = None) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.output_files(run_id, task)


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


def rags_stats(name: str, since: str | float | None = "1h", until: str | float | None = None) -> dict[str, Any]:
    from mlyard import rags

    return rags.stats_view(name, since, until)


def schedules_list() -> list[dict[str, Any]]:
    from mlyard import schedule

    return schedule.list_schedules()


def schedules_show(name: str, runs: int = 10) -> dict[str, Any]:
    from mlyard import schedule

    return schedule.show(name, runs=runs)


def endpoints_list() -> list[dict[str, Any]]:
    from mlyard import endpoints

    return endpoints.list_endpoints()


def endpoints_stats(endpoint: str, since: str | float | None = "1h", until: str | float | None = None,
                    stage: str | None = None, model: str | None = None) -> dict[str, Any]:
    from mlyard import endpoints

    return endpoints.stats(endpoint, since=since, until=until, stage=stage, model=model)


def endpoints_show(endpoint: str) -> dict[str, Any]:
    from mlyard import endpoints

    return endpoints.show(endpoint)


def endpoints_tokens(endpoint: str) -> list[dict[str, Any]]:
    from mlyard import endpoints

    return endpoints.tokens(endpoint)


def pipelines_list() -> list[dict[str, Any]]:
    from mlyard import pipelines

    return pipelines.list_pipelines()


def pipelines_show(name: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.show(name)


def pipelines_graph(name: str) -> dict[str, Any]:
    from mlyard import pipelines

    return pipelines.graph_view(name)


def notebooks_list() -> list[dict[str, Any]]:
    from mlyard import notebooks

    return notebooks.list_notebooks()


def notebooks_show(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return notebooks.show(name)


def notebooks_open(name: str) -> dict[str, Any]:
    from mlyard import notebooks

    return {"url": notebooks.open_url(name)}


def dashboard(since: str = "24h") -> dict[str, Any]:
    from mlyard import dashboard as board

    return board.collect(since)


def logs(**filters: Any) -> list[dict[str, Any]]:
    from mlyard import logs as records

    return records.query(**filters)


QUERIES: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    trainings_list, trainings_show, tunings_list, tunings_show, tunings_trials, runs_list, batches_show,
    evaluations_show, experiments_list, templates_list, templates_show, models_list, models_show, model_reference,
    pipeline_runs_list, pipeline_runs_show, pipeline_runs_graph, pipeline_runs_files, rags_list, rags_show,
    rags_history, rags_logs, rags_stats,
    schedules_list, schedules_show, endpoints_list, endpoints_show, endpoints_stats, endpoints_tokens, pipelines_list,
    pipelines_show, pipelines_graph, notebooks_list,
    notebooks_show, notebooks_open, dashboard, logs, images_list, images_show, accounts_list, accounts_show)}
QUERIES.update(teams.QUERIES)
QUERIES["run_check"] = member_runs.run_check
QUERIES["push_state"] = member_runs.push_state
QUERIES["models_compare"] = models.compare

# What a team member's key may ask (mlyard/service.py): the reads that answer within their projects. The
# rest still answer every project's things, so they are the platform's and its admins' alone until they do.
MEMBER_QUERIES = frozenset({
    "trainings_list", "trainings_show", "tunings_list", "tunings_show", "tunings_trials", "runs_list", "batches_show",
    "evaluations_show", "templates_list", "templates_show", "models_list", "models_show", "models_compare", "logs",
    "run_check", "push_state",
    "endpoints_list", "endpoints_show", "endpoints_tokens", "endpoints_stats", "experiments_list", "schedules_list", "schedules_show",
    "notebooks_list", "notebooks_show", "notebooks_open", "dashboard", "images_list", "images_show", "accounts_list",
    "accounts_show", "pipelines_list", "pipelines_show", "pipelines_graph", "pipeline_runs_list", "pipeline_runs_show",
    "pipeline_runs_graph", "pipeline_runs_files", "rags_list", "rags_show", "rags_history", "rags_logs", "rags_stats",
    *teams.QUERIES})


def ask(query: str, /, **kwargs: Any) -> Any:
    """The answer of `query`: from the stack's warm mlyard API when one runs, else computed here."""
    return answer(query, lambda **given: QUERIES[query](**given), **kwargs)  # the API names an unknown one
