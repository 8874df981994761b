"""mlyard: an open ML lifecycle platform on Prefect 3 and MLflow, from Python.

    import mlyard

    run = mlyard.train("train.yaml")                   # a Run: .wait() .status .metrics .logs() .urls .stop()
    model = run.register("digits", alias="champion")   # a Model version: .deploy() .alias() .show()
    endpoint = model.deploy("digits")                  # an Endpoint: .call() .issue_token() .add_stage()
    endpoint.call({"instances": [[0.0] * 64]}, token=endpoint.issue_token())
    endpoint.add_stage("v2", mlyard.model("digits/2")).canary("v2", 10)   # .promote("v2") or .rollback()

Lifecycle: train, tune, batch_infer, evaluate (each a Run); register_model, model, list_models,
compare_models; deploy, endpoint, list_endpoints; run (a Run by id), list_runs; whoami, projects. RAGs,
notebooks, pipelines and schedules: the modules mlyard.rags, mlyard.notebooks, mlyard.pipelines and
mlyard.schedule (`create`, `list_...`, `show`, ...). Every call reaches the platform `mlyard up` started
(or the production servers named in settings) exactly as the CLI and the Prefect UI do; with a team
member's key (MLYARD_API_KEY, or what `mlyard login` kept) as that member, through the platform's mlyard
API. Bad input raises mlyard.core.errors.SpecError (a ValueError) naming the field; a failed run, RunFailed.
"""

from __future__ import annotations

import typing

from mlyard.core.names import RELEASE

__version__ = RELEASE  # pyproject.toml's version; the one stamp is core/names.py's
__all__ = ["train", "tune", "batch_infer", "evaluate", "run", "list_runs", "register_model", "model", "list_models",
           "compare_models", "deploy", "endpoint", "list_endpoints", "whoami", "projects", "Run", "Model", "Endpoint",
           "rags", "notebooks", "pipelines", "schedule"]
_MODULES = ("rags", "notebooks", "pipelines", "schedule")
_SDK = [name for name in __all__ if name not in _MODULES]

if typing.TYPE_CHECKING:  # what editors and type checkers complete; at run time each is imported on first use
    from mlyard import notebooks, pipelines, rags, schedule
    from mlyard.sdk import (
        Endpoint,
        Model,
        Run,
        batch_infer,
        compare_models,
        deploy,
        endpoint,
        evaluate,
        list_endpoints,
        list_models,
        list_runs,
        model,
        projects,
        register_model,
        train,
        tune,
        whoami,
    )


def run(id: str, kind: str = "training") -> Run:
    """A run already made (by any path: the CLI, the Prefect UI, a schedule) by its id: a Run."""
    from mlyard.sdk import Run

    _logged_in()
    return Run(kind, id)


def __getattr__(name: str):  # imported on first use: `import mlyard` stays instant
    if name in _SDK:
        _logged_in()
        from mlyard import sdk

        return getattr(sdk, name)
    if name in _MODULES:
        _logged_in()
        import importlib

        return importlib.import_module(f"mlyard.{name}")
    raise AttributeError(f"module 'mlyard' has no attribute {name!r}")


def __dir__() -> list[str]:  # the SDK, not this module's machinery
    return sorted([*__all__, "__version__"])


def _logged_in() -> None:
    from mlyard.core.environment import apply_login

    apply_login()  # `mlyard login`'s key and address, where the environment does not say them (as the CLI)
