"""TuningSpec -> Optuna study; Katib's trial states, metric collection and end reasons.

Strategies: `grid` is Optuna's GridSampler over every step of every range (and every listed value);
`random` is RandomSampler; `bayesian` is TPESampler — a model-based sampler that needs no GPU or
extra package and handles int, double and categorical parameters together. Each takes the seed.

Median early stopping is Optuna's MedianPruner with
    n_startup_trials = min_trials_required   (completed — SUCCEEDED — trials before anything is stopped)
    n_warmup_steps   = start_step            (a trial reports its objective with step = 1, 2, 3, ...
                                              so it is never stopped before its start_step-th report)
and a trial is stopped when its best objective so far is worse than the median of the completed
trials' values at the same step. Where Katib differs: Katib's medianstop compares the trial's value
to the median of the completed trials' *running averages* up to that step, and reads steps from
its metrics collector (timestamps); Optuna uses each trial's reported value at that step.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Iterator

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from mlyard.core.metrics import metric_values
from mlyard.core.specs import KATIB_METRIC_PATTERN, HyperparameterSpec, TuningSpec

STATE_ATTR = "katib_state"
REASON_ATTR = "reason"
RUN_ID_ATTR = "run_id"  # the trial's MLflow run
OBJECTIVE_ATTR = "objective"  # the best objective value a trial reported
optuna.logging.set_verbosity(optuna.logging.WARNING)


class KatibState(str, Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    KILLED = "KILLED"
    FAILED = "FAILED"
    METRICS_UNAVAILABLE = "METRICS_UNAVAILABLE"
    EARLY_STOPPED = "EARLY_STOPPED"

    @property
    def optuna_state(self) -> TrialState:
        return {KatibState.SUCCEEDED: TrialState.COMPLETE, KatibState.EARLY_STOPPED: TrialState.PRUNED,
                KatibState.RUNNING: TrialState.RUNNING, KatibState.CREATED: TrialState.WAITING}.get(self, TrialState.FAIL)


INTERRUPTED = "interrupted: the tuning flow stopped while it ran"


def katib_state(trial: FrozenTrial) -> KatibState:
    marked = trial.user_attrs.get(STATE_ATTR)
    if trial.state == TrialState.FAIL and marked in (None, KatibState.RUNNING.value):
        return KatibState.KILLED  # ended by recover_interrupted: its tuning stopped while it ran
    if marked:
        return KatibState(marked)
    return {TrialState.COMPLETE: KatibState.SUCCEEDED, TrialState.PRUNED: KatibState.EARLY_STOPPED,
            TrialState.RUNNING: KatibState.RUNNING, TrialState.WAITING: KatibState.CREATED}.get(trial.state, KatibState.FAILED)


# -- search space -------------------------------------------------------------------------------------

def _numeric(values: Iterable) -> list:
    out = []
    for v in values:
        try:
            out.append(float(v) if "." in str(v) or "e" in str(v).lower() else int(v))
        except (TypeError, ValueError):
            out.append(v)
    return out


def grid_points(p: HyperparameterSpec) -> list:
    if p.values is not None:
        return _numeric(p.values) if p.type != "categorical" else list(p.values)
    if p.type == "int":
        return list(range(int(p.min), int(p.max) + 1, int(p.step)))
    n = int(math.floor((p.max - p.min) / p.step + 1e-9)) + 1
    decimals = max(0, -int(math.floor(math.log10(p.step))) + 2)
    return [round(float(p.min + i * p.step), decimals) for i in range(n)]


def grid_values(spec: TuningSpec) -> dict[str, list]:
    return {p.name: grid_points(p) for p in spec.parameters}


def grid_size(spec: TuningSpec) -> int:
    return int(np.prod([len(v) for v in grid_values(spec).values()]))


def search_space(spec: TuningSpec) -> dict[str, BaseDistribution]:
    space: dict[str, BaseDistribution] = {}
    for p in spec.parameters:
        if p.values is not None:
            space[p.name] = CategoricalDistribution(grid_points(p))
        elif p.type == "int":
            space[p.name] = IntDistribution(int(p.min), int(p.max), step=int(p.step or 1))
        else:
            space[p.name] = FloatDistribution(p.min, p.max)
    return space


# -- the study ----------------------------------------------------------------------------------------

class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its `study.stop()` when the grid is used up: that only works inside
    `study.optimize`, and here the tuning loop ends the search itself (SuggestionEndReached)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(spec: TuningSpec) -> optuna.samplers.BaseSampler:
    if spec.strategy == "grid":
        return _GridSampler(grid_values(spec), seed=spec.seed)
    if spec.strategy == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.max_trials // 4)))


def make_pruner(spec: TuningSpec) -> optuna.pruners.BasePruner:
    es = spec.early_stopping
    if es is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=es.min_trials_required, n_warmup_steps=es.start_step,
                                       interval_steps=1)


def create_study(spec: TuningSpec, storage: str | optuna.storages.BaseStorage | None, study_name: str) -> optuna.Study:
    """The study for `study_name`, created or loaded (a resumed tuning keeps its trials)."""
    if isinstance(storage, str) and storage.startswith("sqlite"):
        storage = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                direction=spec.objective.direction, sampler=make_sampler(spec), pruner=make_pruner(spec))
    if spec.strategy == "grid" and not study.get_trials(deepcopy=False):
        # Optuna's grid sampler visits points in a shuffled order; the grid runs in the order listed
        # instead (each value list as written, each range from min to max by step, the first
        # parameter varying slowest), queued once when the study is made.
        for params in itertools.islice(ordered_grid(spec), spec.max_trials):
            study.enqueue_trial(params)
    return study


def ordered_grid(spec: TuningSpec) -> Iterator[dict[str, Any]]:
    values = grid_values(spec)
    names = [p.name for p in spec.parameters]
    for combo in itertools.product(*(values[n] for n in names)):
        yield dict(zip(names, combo))


Trial = optuna.Trial  # what a trial's task is handed (tasks/trials.py): the engine's own type, named here


def load_study(storage: str, tuning_id: str) -> optuna.Study | None:
    """The study of the tuning `tuning_id` in `storage` (the catalog's URL), or None when it has none."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=f"mlyard-tuning-{tuning_id}", storage=storage)
    except KeyError:
        return None


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a crashed tuning are KILLED (they count as failed). Returns their numbers."""
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # WAITING: queued grid points
        study.tell(t.number, state=TrialState.FAIL)  # katib_state then reads it as KILLED
        numbers.append(t.number)
    return numbers


# -- metrics ------------------------------------------------------------------------------------------

def objective_parsers(spec: TuningSpec) -> list[tuple[str, re.Pattern]]:
    """(metric name, pattern) for every collected metric; see MetricSpec.regex for the group rules."""
    out = []
    for name, regex in spec.metric_regexes().items():
        out.append((name, re.compile(regex or KATIB_METRIC_PATTERN)))
    return out


def parse_line(parsers: list[tuple[str, re.Pattern]], line: str) -> dict[str, float]:
    """The objective and the other collected metrics a trial's line holds (core/metrics.py's rules)."""
    return metric_values(line, parsers)


def best_value(values: list[float], direction: str) -> float | None:
    """Katib's default strategy for the objective: the best value the trial reported (max or min)."""
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


# -- accounting and the end of a tuning ---------------------------------------------------------------

@dataclass(frozen=True)
class TrialReport:
    number: int
    state: KatibState
    params: dict
    value: float | None
    reason: str | None
    run_id: str | None
    started_at: str | None
    seconds: float | None
    partial: bool = False  # the value is a trial's last report before it ended unSUCCEEDED: never a result


@dataclass(frozen=True)
class TrialCounts:
    created: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0  # FAILED + METRICS_UNAVAILABLE (as Katib counts them)
    killed: int = 0
    early_stopped: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.killed + self.early_stopped

    @property
    def total(self) -> int:
        return self.finished + self.running + self.created


def trial_reports(study: optuna.Study) -> list[TrialReport]:
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:  # a queued grid point, not a trial yet
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        state = katib_state(t)
        reason = t.user_attrs.get(REASON_ATTR) or (INTERRUPTED if state == KatibState.KILLED else None)
        value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get(OBJECTIVE_ATTR)
        out.append(TrialReport(t.number, state, dict(t.params), value, reason, t.user_attrs.get(RUN_ID_ATTR),
                               t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None, seconds,
                               partial=value is not None and state != KatibState.SUCCEEDED))
    return out


def trial_counts(reports: Iterable[TrialReport]) -> TrialCounts:
    c = {"created": 0, "running": 0, "succeeded": 0, "failed": 0, "killed": 0, "early_stopped": 0}
    for r in reports:
        key = {KatibState.CREATED: "created", KatibState.RUNNING: "running", KatibState.SUCCEEDED: "succeeded",
               KatibState.KILLED: "killed", KatibState.EARLY_STOPPED: "early_stopped"}.get(r.state, "failed")
        c[key] += 1
    return TrialCounts(**c)


def goal_reached(value: float | None, spec: TuningSpec) -> bool:
    goal = spec.objective.goal
    if value is None or goal is None:
        return False
    return value >= goal if spec.objective.direction == "maximize" else value <= goal


def decide(spec: TuningSpec, counts: TrialCounts, best: float | None, grid_exhausted: bool) -> tuple[str, str] | None:
    """Whether the tuning ends now: (status, reason), or None to go on launching trials.

    Failed when failed trials reach max_failed_trials; COMPLETE with GoalReached, MaxTrialsReached
    (trials started reach max_trials) or SuggestionEndReached (the grid is used up).
    """
    if counts.failed >= spec.max_failed_trials:
        return "FAILED", f"{counts.failed} trials failed (max_failed_trials is {spec.max_failed_trials})"
    if goal_reached(best, spec):
        return "COMPLETE", "GoalReached"
    ended = "MaxTrialsReached" if counts.total >= spec.max_trials else "SuggestionEndReached" if grid_exhausted else None
    if ended is None:
        return None
    if counts.succeeded == 0 and counts.running == 0:
        return "FAILED", (f"no trial succeeded ({ended}: {counts.failed} failed, {counts.killed} killed, "
                          f"{counts.early_stopped} early stopped); see `mlyard tunings trials` for why")
    return "COMPLETE", ended
