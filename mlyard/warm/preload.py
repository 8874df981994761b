"""What the warm runner (server.py) loads before it forks: Prefect, MLflow, SQLAlchemy, Optuna, kfp and
every flow, the `mlyard` command tree, the MLflow stores, and Prefect's logging set-up, each made once
for every child to inherit."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger("mlyard.warm")

# Imported once here, so that no flow run pays for them (the flows' own imports come with them); the
# SQL stores are what a run's first MLflow and Optuna calls would import (a third of a no-op training).
# `prefect.task_engine` and `prefect.utilities.visualization` (graphviz) come with a flow's first task.
PRELOAD = ("prefect", "prefect.engine", "prefect.flow_engine", "prefect.flows", "prefect.deployments.steps",
           "prefect.runner", "prefect.task_engine", "prefect.utilities.visualization", "mlflow", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy",
           "optuna", "optuna.storages",  # Optuna (only tuning/ calls it), before a tuning run imports it
           # a pipeline's checks, graph, upload and run read its KFP IR with kfp's protobuf classes, and `import
           # kfp` brings its client and the Kubernetes client (0.6 s of CPU; 12% of the runner's children's
           # time in a test suite, bench/README.md, twelfth session)
           "kfp", "kfp.pipeline_spec.pipeline_spec_pb2", "kfp.local", "kfp.components", "google.protobuf.json_format")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for path in sorted((Path(__file__).parent.parent / "flows").glob("*.py")):
        importlib.import_module(f"mlyard.flows.{path.stem}")  # `import mlyard.flows` points Prefect at the platform
    from mlyard.tasks.orchestration import prompt_flow_ends

    prompt_flow_ends()  # a run ends when its work does, not up to 1 s later
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # every ORM model imported above, configured once (no connection is made)
    _KEEP.extend(warm_objects())
    _build_cli()
    from prefect.logging.configuration import setup_logging

    setup_logging(incremental=False)  # from the settings as they are now, for the children to inherit
    LOGGING_SET_UP["inputs"] = logging_inputs()


def _build_cli() -> None:
    """The `mlyard` command tree, imported and built once for the commands' children: typer makes click's
    commands from every command function's signature at each call (0.13 s of CPU a command with the
    import). The tree holds no settings: options read the environment when a command parses them."""
    import typer.main

    from mlyard.cli import app

    built = typer.main.get_command(app)
    made = typer.main.get_command

    def get_command(instance: typer.Typer):  # what Typer.__call__ asks for, the tree built above for `app`
        return built if instance is app else made(instance)

    typer.main.get_command = get_command  # type: ignore[assignment]


LOGGING_SET_UP: dict[str, object] = {}  # what the logging set-up the children inherit was made from


def logging_inputs() -> object:
    """What Prefect's logging set-up (`setup_logging`) is made from: the three logging levels its logging
    file names, the console's colours and markup, the extra loggers, and the environment variables that
    override an entry of that file (PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL, ...); None when a logging file
    of the user's (which may name any setting) is used. Other logging settings (to_api.*, log_prints) are
    read when a run logs, not at the set-up. A child whose inputs are the runner's, writing to no terminal
    (the handlers' colours depend on it), keeps the runner's set-up: its handlers write to the standard
    streams, which the child has taken over."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.logging.config_path.exists():
        return None
    logging_ = settings.logging
    return (logging_.level, settings.server.logging_level, settings.internal.logging_level, logging_.colors,
            logging_.markup, logging_.extra_loggers,
            sorted((key, value) for key, value in os.environ.items() if key in _config_overrides()))


@functools.cache
def _config_overrides() -> frozenset[str]:
    """The variables Prefect's `load_logging_config` reads: one per entry of its default logging file
    (read once, by the runner's own set-up: the children inherit it)."""
    import yaml
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH, to_envvar
    from prefect.utilities.collections import dict_to_flatdict

    entries: dict = dict_to_flatdict(yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text()))
    return frozenset(to_envvar("PREFECT_LOGGING_" + "_".join(key)).upper() for key in entries)


_KEEP: list = []  # what warm_objects made, held for the children to inherit


def warm_objects() -> list:
    """Objects each flow run would otherwise build afresh, made once here for the children to inherit.

    - The stack's MLflow stores: MLflow keeps one per URI for a process's life, and making it checks
      the database's schema against every Alembic migration script it ships (a third of a second, a
      fifth of a warm no-op training). Their engines are disposed here: no connection is open at a fork,
      and each child opens its own.
    - `OrchestrationResult[Any]`, which Prefect's engine parametrizes at every state change: pydantic's
      cache of parametrized models holds them weakly, so each run built the class again (0.17 s).
    A failure here is logged: the runs then make them themselves."""
    from typing import Any

    from prefect.client.schemas import OrchestrationResult

    kept: list = [OrchestrationResult[Any]]
    try:
        from mlflow.tracking._model_registry.utils import _get_store as registry_store
        from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

        from mlyard.core.settings import Settings

        uri = Settings().mlflow_uri
        for store in (tracking_store(uri), registry_store(uri, uri)):  # as MlflowClient(uri, uri) asks
            for engine in (getattr(store, "engine", None), getattr(store, "read_engine", None)):
                if engine is not None:
                    engine.dispose()
            kept.append(store)
    except Exception as exc:  # noqa: BLE001 - only a saving is lost
        log.warning("could not make the MLflow stores ahead of the runs: %s", exc)
    return kept


