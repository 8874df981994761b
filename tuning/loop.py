"""The trial loop and its Optuna bookkeeping, pure (no Prefect): ask a trial while `decide` says go on
and a slot is free, hand it to `launch` (which says where it runs), feed its objective to the median
rule, and record how it ended.

- `run_trials(spec, study, launch, should_stop, log)` -> (status, reason); `launch(trial)` returns a
  `concurrent.futures.Future` that ends when the trial has ended (`record_outcome` done).
- `Pruner`: a trial's objective values as Optuna reports (step 1, 2, 3, ...), and the median rule.
- `record_outcome`: the trial's Katib state, reason, MLflow run and objective, then `study.tell`.
- `summary(study)`: counts and the best trial, for the tuning's result.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

import optuna

from mlyard.core.specs import TuningSpec
from mlyard.tuning.engine import (
    OBJECTIVE_ATTR,
    REASON_ATTR,
    RUN_ID_ATTR,
    STATE_ATTR,
    KatibState,
    best_value,
    decide,
    grid_size,
    search_space,
    trial_counts,
    trial_reports,
)


class Loop:
    """One tuning's trial loop. `stop_reason` is set once the tuning ends early (goal reached,
    failures, a user's stop): running trials read it and end."""

    def __init__(self, spec: TuningSpec, study: optuna.Study):
        self.spec, self.study = spec, study
        self.stop_reason: str | None = None

    def run(self, launch: Callable[[optuna.Trial], concurrent.futures.Future],
            should_stop: Callable[[], str | None], log: Callable[[str], None] = lambda line: None) -> tuple[str, str]:
        """Launch trials while `decide` says go on; returns (status, reason)."""
        spec, study = self.spec, self.study
        space = search_space(spec)
        grid_n = grid_size(spec) if spec.strategy == "grid" else None
        running: list[concurrent.futures.Future] = []
        last_progress = None
        while True:
            counts = trial_counts(trial_reports(study))
            best = best_so_far(study)
            verdict = decide(spec, counts, best, grid_exhausted=grid_n is not None and counts.total >= grid_n)
            progress = (counts.succeeded, counts.running, counts.failed, counts.early_stopped, counts.killed, best)
            if progress != last_progress:
                log("trials: %d succeeded, %d running, %d failed, %d early stopped, %d killed; best %s=%s"
                    % (*progress[:5], spec.objective.metric, best))
                last_progress = progress
            cancelled = should_stop()
            if cancelled or (verdict and (verdict[0] == "FAILED" or verdict[1] == "GoalReached")):
                self.stop_reason = cancelled or (verdict[1] if verdict else None)
                concurrent.futures.wait(running)
                if cancelled:
                    return "STOPPED", cancelled
                assert verdict is not None
                return verdict
            running = [f for f in running if not f.done()]
            if verdict:
                if not running:
                    return verdict
            elif len(running) < spec.parallel_trials:
                trial = study.ask(space)
                trial.set_user_attr(STATE_ATTR, KatibState.RUNNING.value)
                running.append(launch(trial))
                continue
            if running:  # until one trial ends (or half a second passes: stop requests are checked)
                concurrent.futures.wait(running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)


class Pruner:
    """Feeds a trial's objective values to Optuna (step = 1, 2, 3, ...) and remembers when the median
    rule fired. `stop_reason()` is what ends the trial: the rule, or the tuning ending."""

    def __init__(self, loop: Loop, trial: optuna.Trial):
        self.loop, self.trial = loop, trial
        self.values: list[float] = []
        self.pruned_at: int | None = None
        self.lock = threading.Lock()

    def report(self, value: float) -> None:
        with self.lock:
            self.values.append(value)
            self.trial.report(value, step=len(self.values))
            if self.loop.spec.early_stopping and self.pruned_at is None and self.trial.should_prune():
                self.pruned_at = len(self.values)

    def stop_reason(self) -> str | None:
        if self.pruned_at is not None:
            return f"early stopped by the median rule after {self.pruned_at} reports"
        return self.loop.stop_reason

    def checked(self, state: KatibState, reason: str | None) -> tuple[KatibState, str | None]:
        """A trial that SUCCEEDED without ever reporting its objective is METRICS_UNAVAILABLE."""
        if state == KatibState.SUCCEEDED and not self.values:
            return KatibState.METRICS_UNAVAILABLE, f"the objective {self.loop.spec.objective.metric!r} was never printed"
        return state, reason

    def stopped_state(self) -> KatibState:
        """How a trial that was stopped ended: by the median rule, or killed."""
        return KatibState.EARLY_STOPPED if self.pruned_at is not None else KatibState.KILLED


def record_outcome(trial: optuna.Trial, spec: TuningSpec, pruner: Pruner, state: KatibState, reason: str | None,
                   run_id: str | None) -> KatibState:
    """Close the trial in the study (see `Pruner.checked`); its value is the best one it reported."""
    state, reason = pruner.checked(state, reason)
    value = best_value(pruner.values, spec.objective.direction)
    trial.set_user_attr(STATE_ATTR, state.value)
    if run_id:
        trial.set_user_attr(RUN_ID_ATTR, run_id)
    if reason:
        trial.set_user_attr(REASON_ATTR, reason[:2000])
    if value is not None:
        trial.set_user_attr(OBJECTIVE_ATTR, value)
    trial.study.tell(trial, value if state == KatibState.SUCCEEDED else None, state=state.optuna_state)
    return state


def best_so_far(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def summary(study: optuna.Study) -> dict[str, Any]:
    """Counts and the best trial: best_trial, best_value, best_params, best_run_id, counts."""
    reports = trial_reports(study)
    counts = trial_counts(reports)
    best = None
    try:
        number = study.best_trial.number
        best = next(r for r in reports if r.number == number)
    except ValueError:
        pass
    return {"best_trial": best.number if best else None, "best_value": best.value if best else None,
            "best_params": best.params if best else {}, "best_run_id": best.run_id if best else None,
            "counts": {k: getattr(counts, k) for k in ("succeeded", "running", "failed", "killed", "early_stopped")}}
