"""Tunings as users see them: flow runs of the `tune` flow with the seeds' statuses (derived from
Prefect's state) and their trials from the Optuna study in the platform DB."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mlyard import runs
from mlyard.core.errors import TuningNotFound
from mlyard.runs import TUNING, RunInfo

FLOW_NAME = TUNING.flow
TuningInfo = RunInfo
__all__ = ["TuningNotFound", "TuningInfo", "list_tunings", "get_tuning", "stop_tuning", "trials"]


def list_tunings(limit: int = 100) -> list[TuningInfo]:
    """Newest first; statuses as mlyard/runs.py derives them (COMPLETE carries its reason)."""
    return runs.list_runs(TUNING, limit)


def get_tuning(tuning_id: str) -> TuningInfo:
    return runs.get_run(TUNING, tuning_id)


def stop_tuning(tuning_id: str, reason: str = "stopped by user") -> TuningInfo:
    """Stop a tuning: its running trials are KILLED; it becomes STOPPED."""
    return runs.stop_run(TUNING, tuning_id, reason)


def trials(catalog_url: str, tuning_id: str) -> list[dict[str, Any]]:
    """The tuning's trials (Katib states, params, objective, MLflow run) from its study."""
    from mlyard.tuning.engine import load_study, trial_reports

    study = load_study(catalog_url, tuning_id)
    return [{**asdict(r), "state": r.state.value} for r in trial_reports(study)] if study is not None else []


def end_interrupted_trials(catalog_url: str, tuning_id: str) -> list[int]:
    """A crashed tuning's trials still RUNNING in its study end KILLED (mlyard.tuning.engine.recover_interrupted,
    as a resumed tuning ends them); their numbers."""
    from mlyard.tuning.engine import load_study, recover_interrupted

    study = load_study(catalog_url, tuning_id)
    return recover_interrupted(study) if study is not None else []


def best_trial(rows: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The SUCCEEDED trial with the best objective value, or None."""
    done = [r for r in rows if r["state"] == "SUCCEEDED" and r["value"] is not None]
    if not done:
        return None
    best = (max if direction == "maximize" else min)(done, key=lambda r: r["value"])
    return {"number": best["number"], "value": best["value"], "params": best["params"], "run_id": best["run_id"]}
