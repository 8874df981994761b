"""The Python SDK: the lifecycle as handles that can be waited on, looked at and acted on.

    import mlyard

    run = mlyard.train("train.yaml")                     # a Run, ended (wait=False: queued; run.wait() later)
    run.status, run.metrics, run.urls                    # "COMPLETE", {"accuracy": 0.97}, {"prefect": ..., "mlflow": ...}
    model = run.register("digits", alias="champion")     # a Model version
    endpoint = model.deploy("digits")                    # an Endpoint, ACTIVE, with its URL
    token = endpoint.issue_token()
    endpoint.call({"instances": [[0.0] * 64]}, token=token)

Every call takes the same path as the CLI: on the platform `mlyard up` started (or the production servers
named in settings), as the signed-in team member where MLYARD_API_KEY (or `mlyard login`) says one, checked
the same way, and failing with the same one-line errors (mlyard.core.errors). The handles hold a name or an
id, and read anew what they show: `Run("training", id)` made in another process is the same run.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlyard import api
from mlyard.commands import act
from mlyard.core.errors import RunFailed, SpecError, TrainingStopped
from mlyard.queries import ask

# kind -> the action, the query that shows one, and the name of that query's argument
KINDS: dict[str, tuple[api.Action, str, str]] = {
    "training": (api.TRAINING, "trainings_show", "training_id"),
    "tuning": (api.TUNING, "tunings_show", "tuning_id"),
    "batch": (api.BATCH, "batches_show", "batch_id"),
    "evaluation": (api.EVALUATION, "evaluations_show", "evaluation_id"),
}
ENDED = ("COMPLETE", "FAIL", "STOPPED", "CREATE FAILED")


class Run:
    """A training, tuning, batch inference or evaluation: `.wait()`, `.status`, `.metrics`, `.logs()`,
    `.urls` (its Prefect run, its MLflow run), `.stop()`; a training's or tuning's `.register(name)`.
    `.result` is what the flow returned (a TrainingResult, ...) once it ended in this process's reach."""

    def __init__(self, kind: str, id: str, *, result: Any = None, queued: api.Submitted | None = None) -> None:
        if kind not in KINDS:
            raise SpecError("kind", kind, f"one of {', '.join(KINDS)}")
        self.kind, self.id, self.result, self._queued = kind, id, result, queued

    def __repr__(self) -> str:
        return f"Run({self.kind!r}, {self.id!r})"

    def __getattr__(self, name: str) -> Any:  # the result's fields (training_id, run_id, model_uri, ...)
        if name.startswith("_") or self.__dict__.get("result") is None:
            raise AttributeError(name)
        return getattr(self.__dict__["result"], name)

    def show(self) -> dict[str, Any]:
        """Everything `mlyard <kind>s show ID --json` says: status, cause, spec, MLflow run, links."""
        _, query, argument = KINDS[self.kind]
        return ask(query, **{argument: self.id})

    @property
    def status(self) -> str:
        """The status as the console names it (CREATE REQUESTED ... COMPLETE, FAIL TRAIN, STOPPED)."""
        return str(self.show()["status"])

    @property
    def metrics(self) -> dict[str, Any]:
        """The last value of each metric (a batch's summary; a tuning's best trial)."""
        shown = self.show()
        return shown.get("metrics") or shown.get("summary") or shown.get("best_trial") or {}

    @property
    def urls(self) -> dict[str, str]:
        """The run's pages: `prefect` (its flow run) and, once it has one, `mlflow` (its MLflow run)."""
        return dict(self.show().get("links") or {})

    def logs(self, tail: int = 100) -> list[str]:
        """The run's last `tail` log lines (`mlyard logs --<kind> ID`)."""
        return [str(r.get("body", "")) for r in ask("logs", **{self.kind: self.id}, limit=tail)]

    def wait(self, timeout: float | None = None, poll_seconds: float = 1.0) -> Run:
        """Until the run ends: itself, or RunFailed / TrainingStopped with why (TimeoutError after `timeout`)."""
        if self._queued is not None:
            done = self._queued.wait(timeout, poll_seconds)
            self.result = None if isinstance(done, dict) else done
            self._queued = None
            return self
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (status := self.status).startswith(ENDED) or status == "COMPLETE IN PROGRESS":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} {self.id} is still {status} after {timeout:g} s")
            time.sleep(poll_seconds)
        if status == "STOPPED":
            raise TrainingStopped(self.show().get("cause") or "stopped")
        if status.startswith("FAIL") or status == "CREATE FAILED":
            raise RunFailed(status, self.id, self.show().get("cause"))
        return self

    def stop(self) -> str:
        """Stop it like the UI's Cancel: its process group ends and it becomes STOPPED; the new status."""
        return str(act("runs_stop", kind=self.kind.upper(), run_id=self.id)["status"])

    def register(self, model: str, *, alias: str | None = None, description: str = "") -> Model:
        """A new version of `model` from this training (or this tuning's best trial): a Model."""
        if self.kind not in ("training", "tuning"):
            raise SpecError("register", self.kind, "a training or a tuning")
        made = act("models_create", name=model, **{f"from_{self.kind}": self.id}, alias=alias,
                   description=description)
        return Model(made["name"], str(made["version"]))


class Model:
    """A registered model version: `.show()`, `.alias(name)`, `.deploy(endpoint)`; `.ref` is name/version."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, str(version)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.version!r})"

    @property
    def ref(self) -> str:
        """`name/version`, as specs and the CLI name a version."""
        return f"{self.name}/{self.version}"

    def show(self) -> dict[str, Any]:
        """The version: framework, stage, aliases, lineage (the run it came from) and its MLflow links."""
        return ask("models_show", ref=self.ref)

    @property
    def urls(self) -> dict[str, str]:
        """Its pages in the MLflow UI: `mlflow` (the version), `mlflow_run` (the run it came from)."""
        return dict(self.show().get("links") or {})

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics of the run that made it (a tuning's: its best trial's); a folder's version has none."""
        return dict(compare_models(self, self)["versions"][0]["metrics"])

    def alias(self, alias: str) -> Model:
        """Point `alias` (champion, say) at this version."""
        act("models_alias", name=self.name, alias=alias, version=self.version)
        return self

    def deploy(self, endpoint: str, *, public: bool = False, wait: bool = True, **resource: Any) -> Endpoint:
        """A new endpoint serving this version from its default stage; `resource` takes a stage resource's
        fields (pods, cpu, memory, ...: core/specs/endpoint.py). Waits until it is ACTIVE unless told not to."""
        return deploy({"name": endpoint, "public": public, "stage": {"resources": [{"model": self.ref, **resource}]}},
                      wait=wait)

    def stage(self, **resource: Any) -> dict[str, Any]:
        """A stage spec serving this version (for Endpoint.add_stage)."""
        return {"resources": [{"model": self.ref, **resource}]}


class Endpoint:
    """An endpoint: `.call()`, `.issue_token()`, `.add_stage()`, `.canary()`, `.promote()`, `.rollout()`,
    `.rollback()`, `.stats()`, `.show()`, `.delete()`; `.url` is its default URL."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r})"

    def show(self) -> dict[str, Any]:
        """Its stages, their resources and replicas, statuses, shares and URLs."""
        return ask("endpoints_show", endpoint=self.name)

    @property
    def status(self) -> str:
        """CREATE IN PROGRESS, ACTIVE, UPDATE IN PROGRESS, ... as the console names an endpoint's status."""
        return str(self.show()["status"])

    @property
    def url(self) -> str:
        """The default stage's URL (of its first model, by name)."""
        default = self.show()["urls"]["default"]
        return default[sorted(default)[0]]

    def issue_token(self, days: float = 30) -> str:
        """A new token for callers, valid `days` (shown this once)."""
        return str(act("endpoints_issue", name=self.name, days=days)["token"])

    def tokens(self) -> list[dict[str, Any]]:
        """Its tokens (never the secret itself): id, expiry, daily budget, use today."""
        return ask("endpoints_tokens", endpoint=self.name)

    def call(self, body: dict[str, Any], *, token: str | None = None, url: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        """POST `body` (JSON) to the default URL (or `url`, a stage's) with `token`: the JSON answer. An HTTP
        error raises urllib's HTTPError, its body the server's reason."""
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        request = urllib.request.Request(url or self.url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)

    def add_stage(self, stage: str, spec: dict[str, Any] | Model, *, wait: bool = True) -> Endpoint:
        """A stage named `stage` (a Model's version, or a stage spec); it answers at its own URL until promoted."""
        from mlyard import endpoints

        fields = spec.stage() if isinstance(spec, Model) else dict(spec)
        endpoints.add_stage(self.name, {**fields, "name": stage}, submit=not wait)
        return self

    def canary(self, stage: str, weight: int | None = None, *, shadow: int | None = None) -> Endpoint:
        """`weight` % of the default traffic to `stage` (or `shadow` % mirrored to it; 0 stops either)."""
        from mlyard import promotion

        promotion.canary(self.name, stage, weight=weight, shadow=shadow)
        return self

    def promote(self, stage: str, *, keep_old: bool = False) -> Endpoint:
        """Make `stage` the default at once; the old default drains and is deleted (unless `keep_old`)."""
        from mlyard import endpoints

        endpoints.promote(self.name, stage, keep_old=keep_old)
        return self

    def rollout(self, stage: str, policy: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
        """Promote `stage` step by step behind the policy's gates (the endpoint's, or `policy`): the promotion."""
        from mlyard import promotion

        return promotion.rollout(self.name, stage, policy=policy)

    def rollback(self) -> Endpoint:
        """Back to the default stage alone: the promotion in progress is aborted, every canary's share is 0."""
        from mlyard import promotion

        shares = promotion.show(self.name)
        if shares.get("active"):
            promotion.abort(self.name)
        for stage, share in shares["shares"].items():
            if not share["default"] and (share["weight"] or share["shadow"]):
                promotion.canary(self.name, stage, weight=0, shadow=0)
        return self

    def stats(self, since: str = "1h", png: str | Path | None = None) -> dict[str, Any]:
        """Calls, failures, latency percentiles and more per stage and model since `since` (a chart to `png`)."""
        from mlyard import endpoints

        return endpoints.stats(self.name, since=since, png=png)

    def delete(self, stage: str | None = None) -> dict[str, Any]:
        """Delete a stage, or (none named) the endpoint with its default stage."""
        from mlyard import endpoints

        return endpoints.delete(self.name, stage)


def _run(kind: str, spec: Any, sets: dict[str, Any] | None, wait: bool, pool: api.Pool) -> Run:
    action = KINDS[kind][0]
    done = api.run(action, spec, sets=sets, submit=not wait or pool != "local", pool=pool)
    if isinstance(done, api.Submitted):
        run = Run(kind, done.id, queued=done)
        return run.wait() if wait else run
    return Run(kind, str(getattr(done, KINDS[kind][2])), result=done)  # an evaluation's batch_id is its batch's


def train(spec: Any, *, sets: dict[str, Any] | None = None, wait: bool = True, pool: api.Pool = "local") -> Run:
    """Run a training (a YAML path, a mapping or a TrainingSpec): a Run, ended unless `wait=False`."""
    return _run("training", spec, sets, wait, pool)


def tune(spec: Any, *, sets: dict[str, Any] | None = None, wait: bool = True, pool: api.Pool = "local") -> Run:
    """Run a hyperparameter tuning (grid, random or Bayesian; median early stopping): a Run."""
    return _run("tuning", spec, sets, wait, pool)


def batch_infer(spec: Any, *, sets: dict[str, Any] | None = None, wait: bool = True,
                pool: api.Pool = "local") -> Run:
    """Run a batch inference over files of records: a Run."""
    return _run("batch", spec, sets, wait, pool)


def evaluate(spec: Any, *, sets: dict[str, Any] | None = None, wait: bool = True, pool: api.Pool = "local") -> Run:
    """Evaluate a model against labelled data (metrics, curves, a confusion matrix in MLflow): a Run."""
    return _run("evaluation", spec, sets, wait, pool)


def register_model(name: str, *, training: str | Run | None = None, tuning: str | Run | None = None,
                   folder: str | Path | None = None, alias: str | None = None, description: str = "") -> Model:
    """A new version of `name` from exactly one of a training, a tuning's best trial, or a model folder."""
    if folder is not None:
        from mlyard.core.settings import Settings
        from mlyard.core.uris import absolute

        folder = absolute(str(folder), Path.cwd())
        if Settings().api_key is not None:  # a member's folder: uploaded to their project first, as the CLI does
            from mlyard.uploads import shipped

            folder = shipped("folder", folder, Settings(), print)
    made = act("models_create", name=name, from_training=getattr(training, "id", training),
               from_tuning=getattr(tuning, "id", tuning), artifact_uri=folder, alias=alias, description=description)
    return Model(made["name"], str(made["version"]))


def model(ref: str) -> Model:
    """A version by `name/version` or `name@alias` (a name alone: its latest version)."""
    found = ask("models_show", ref=ref)
    if "versions" in found:
        if not found["versions"]:
            raise SpecError("model", ref, "a model with a version")
        found = max(found["versions"], key=lambda v: int(v["version"]))
    return Model(found["name"], str(found["version"]))


def compare_models(*versions: str | Model) -> dict[str, Any]:
    """Two or more versions side by side (a Model, or `name`, `name/version`, `name@alias`): `versions`, each
    with its `metrics` and `params` from the run that made it, and `metrics`, every metric any of them has.

        mlyard.compare_models("digits@champion", "digits/3")["versions"][1]["metrics"]["accuracy"]
    """
    return ask("models_compare", refs=[v.ref if isinstance(v, Model) else str(v) for v in versions])


def list_models() -> list[dict[str, Any]]:
    """The registered models this caller sees, each with its latest version and aliases."""
    return ask("models_list")


def list_runs(kind: str = "training", limit: int = 50) -> list[dict[str, Any]]:
    """The runs of `kind` (training, tuning, batch, evaluation) this caller sees, newest first."""
    if kind == "training":
        return ask("trainings_list", limit=limit)
    if kind == "tuning":
        return ask("tunings_list", limit=limit)
    return ask("runs_list", kind={"batch": "BATCH", "evaluation": "EVALUATION"}.get(kind, kind), limit=limit)


def deploy(spec: dict[str, Any] | str | Path, *, sets: dict[str, Any] | None = None, wait: bool = True) -> Endpoint:
    """Deploy an endpoint from its spec (a YAML path or a mapping: name, public, stage): an Endpoint."""
    from mlyard import endpoints
    from mlyard.core.specs.endpoint import EndpointSpec

    loaded = api.load(EndpointSpec, spec, sets)
    endpoints.create(loaded, submit=not wait)
    return Endpoint(loaded.name)


def endpoint(name: str) -> Endpoint:
    """An endpoint by name (its existence is checked at its first call)."""
    return Endpoint(name)


def list_endpoints() -> list[dict[str, Any]]:
    """The endpoints this caller sees, with their status, default stage and models."""
    return ask("endpoints_list")


def whoami() -> dict[str, Any]:
    """Who this process acts as (the key's user, or the machine's owner), and their projects and roles."""
    return ask("whoami")


def projects() -> list[dict[str, Any]]:
    """The projects this caller is a member of (every project, for an admin)."""
    return ask("projects_list")
