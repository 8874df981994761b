"""The tuning engine on an in-memory Optuna study: strategies, grid, median rule edges, accounting."""

import itertools

import optuna
import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs import TuningSpec, load_spec
from mlyard.tuning import (
    KatibState,
    TrialCounts,
    create_study,
    decide,
    grid_size,
    grid_values,
    recover_interrupted,
    search_space,
)
from mlyard.tuning.engine import best_value, objective_parsers, parse_line, trial_counts, trial_reports

TRAINING = {"name": "x", "source_uri": ".", "entry_point": "main.py"}


def make(**kw) -> TuningSpec:
    base = {"name": "t", "training": TRAINING, "strategy": "random", "seed": 7,
            "parameters": [{"name": "lr", "type": "double", "min": 0.001, "max": 0.1},
                           {"name": "layers", "type": "int", "min": 1, "max": 4},
                           {"name": "opt", "type": "categorical", "values": "sgd,adam"}],
            "objective": {"metric": "accuracy", "direction": "maximize"}}
    return load_spec(TuningSpec, {**base, **kw})


@pytest.mark.parametrize("strategy", ["random", "bayesian"])
def test_same_seed_same_suggestions(strategy):
    def suggestions(seed):
        spec = make(strategy=strategy, seed=seed)
        study = create_study(spec, None, "s")
        out = []
        for i in range(12):
            t = study.ask(search_space(spec))
            out.append(dict(t.params))
            study.tell(t, float(i % 5))
        return out

    assert suggestions(3) == suggestions(3)
    assert suggestions(3) != suggestions(4)


def test_grid_enumerates_exactly_the_product_then_ends():
    spec = make(strategy="grid", max_trials=100, parameters=[
        {"name": "lr", "type": "double", "min": 0.01, "max": 0.05, "step": 0.02},
        {"name": "layers", "type": "int", "min": 1, "max": 3, "step": 1},
        {"name": "opt", "type": "categorical", "values": ["sgd", "adam"]}])
    assert grid_values(spec) == {"lr": [0.01, 0.03, 0.05], "layers": [1, 2, 3], "opt": ["sgd", "adam"]}
    assert grid_size(spec) == 18
    study = create_study(spec, None, "g")
    seen = []
    for _ in range(18):
        assert decide(spec.model_copy(update={"max_trials": 100}), trial_counts(trial_reports(study)), None,
                      grid_exhausted=len(seen) >= 18) is None
        t = study.ask(search_space(spec))
        seen.append((t.params["lr"], t.params["layers"], t.params["opt"]))
        study.tell(t, 0.5)
    assert seen == list(itertools.product([0.01, 0.03, 0.05], [1, 2, 3], ["sgd", "adam"]))  # in order
    assert decide(spec.model_copy(update={"max_trials": 100}), trial_counts(trial_reports(study)), 0.5,
                  grid_exhausted=True) == ("COMPLETE", "SuggestionEndReached")


def test_decide_reasons():
    spec = make(max_trials=5, max_failed_trials=2, objective={"metric": "accuracy", "direction": "maximize", "goal": 0.9})
    assert decide(spec, TrialCounts(succeeded=1), 0.95, False) == ("COMPLETE", "GoalReached")
    assert decide(spec, TrialCounts(succeeded=1), 0.85, False) is None
    assert decide(spec, TrialCounts(succeeded=3, running=2), 0.85, False) == ("COMPLETE", "MaxTrialsReached")
    assert decide(spec, TrialCounts(failed=2), None, False)[0] == "FAILED"
    ended_empty = decide(spec, TrialCounts(failed=1, killed=2, early_stopped=2), None, False)
    assert ended_empty[0] == "FAILED" and ended_empty[1].startswith("no trial succeeded (MaxTrialsReached")
    assert decide(make(max_trials=5), TrialCounts(failed=1, running=4), None, False) == ("COMPLETE", "MaxTrialsReached")
    low = make(objective={"metric": "loss", "direction": "minimize", "goal": 0.1})
    assert decide(low, TrialCounts(succeeded=1), 0.05, False) == ("COMPLETE", "GoalReached")


def _run(study, space, values):
    t = study.ask(space)
    for step, v in enumerate(values, start=1):
        t.report(v, step)
        if t.should_prune():
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(t, values[-1])
    return None


@pytest.mark.parametrize("min_trials, start_step, completed, stopped_at", [
    (3, 4, 3, 4),     # three good trials done: the bad one is stopped at its 4th report, not before
    (3, 2, 3, 2),     # an earlier start step stops it earlier
    (3, 4, 2, 4),     # ... min_trials_required counts SUCCEEDED trials only: 2 + the 3rd = stopped at 4 when 3 done
    (4, 4, 3, None),  # fewer succeeded trials than min_trials_required: never stopped
    (3, 7, 3, None),  # start_step beyond its reports: never stopped
])
def test_median_rule_edges(min_trials, start_step, completed, stopped_at):
    spec = make(early_stopping={"min_trials_required": min_trials, "start_step": start_step})
    study = create_study(spec, None, "m")
    space = search_space(spec)
    for _ in range(completed):
        assert _run(study, space, [0.8, 0.82, 0.84, 0.86, 0.88, 0.9]) is None
    if completed < min_trials and stopped_at is not None:
        assert _run(study, space, [0.8, 0.82, 0.84, 0.86, 0.88, 0.9]) is None
    assert _run(study, space, [0.1] * 6) == stopped_at


def test_interrupted_trials_are_killed_on_resume(tmp_path):
    spec = make()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(spec, url, "resume")
    space = search_space(spec)
    for v in (0.5, 0.6):
        t = study.ask(space)
        study.tell(t, v)
    study.ask(space)  # left RUNNING by a crash
    again = create_study(spec, url, "resume")
    assert recover_interrupted(again) == [2]
    states = [r.state for r in trial_reports(again)]
    assert states == [KatibState.SUCCEEDED, KatibState.SUCCEEDED, KatibState.KILLED]
    assert trial_counts(trial_reports(again)).killed == 1 and again.best_value == 0.6


def test_a_trial_that_did_not_succeed_shows_its_value_as_partial(tmp_path):
    spec = make(metrics=[{"name": "accuracy"}])
    study = create_study(spec, f"sqlite:///{tmp_path}/s.db", "partial")
    good, bad = study.ask(search_space(spec)), study.ask(search_space(spec))
    good.set_user_attr("katib_state", "SUCCEEDED")
    study.tell(good, 0.5)
    bad.set_user_attr("katib_state", "FAILED")
    bad.set_user_attr("objective", 0.9)
    study.tell(bad, None, state=optuna.trial.TrialState.FAIL)
    reports = {r.number: r for r in trial_reports(study)}
    assert (reports[0].value, reports[0].partial) == (0.5, False)
    assert (reports[1].value, reports[1].partial) == (0.9, True)
    assert study.best_value == 0.5, "a partial value is never ranked"


def test_metric_regexes():
    spec = make(metrics=[{"name": "accuracy", "regex": r"acc: (?P<value>[\d.]+)"}, {"name": "loss"},
                         {"name": "f1", "regex": r"F1 score ([\d.]+)"}])
    parsers = objective_parsers(spec)
    assert parse_line(parsers, "epoch 3 acc: 0.91 loss=0.2 F1 score 0.77") == {"accuracy": 0.91, "loss": 0.2, "f1": 0.77}
    assert parse_line(parsers, "nothing") == {}
    assert best_value([0.3, 0.9, 0.5], "maximize") == 0.9 and best_value([0.3, 0.1], "minimize") == 0.1
    assert best_value([], "maximize") is None


@pytest.mark.parametrize("patch, words", [
    ({"parameters": []}, "parameters is empty"),
    ({"parameters": [{"name": "lr", "type": "double", "min": 0.5, "max": 0.1}]}, "min 0.5 is larger than max 0.1"),
    ({"parameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 0.5, "step": 0}]}, "step 0 must be greater than 0"),
    ({"parameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 0.5, "step": 1}]}, "step 1 is larger than the range"),
    ({"strategy": "grid", "parameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 0.5}]}, "grid needs a step"),
    ({"metrics": [{"name": "loss"}]}, "objective.metric 'accuracy' is not one of metrics"),
    ({"metrics": [{"name": "accuracy", "regex": "(unclosed"}]}, "does not compile"),
    ({"metrics": [{"name": "accuracy", "regex": "accuracy"}]}, "has no group for the value"),
    ({"metrics_format": "json", "metrics": [{"name": "accuracy", "regex": "acc ([0-9.]+)"}]}, "read by its key"),
    ({"metrics_format": "xml"}, "metrics_format"),
    ({"parallel_trials": 0}, "parallel_trials"),
    ({"template": "t"}, "exactly one of training"),
    ({"parameters": [{"name": "opt", "type": "categorical"}]}, "needs values"),
])
def test_bad_tuning_specs_are_refused_naming_the_field(patch, words):
    with pytest.raises(SpecError) as info:
        make(**patch)
    assert words in str(info.value)


def test_grid_runs_in_the_order_listed(tmp_path):
    spec = make(strategy="grid", max_trials=10, parameters=[
        {"name": "optimizer", "type": "categorical", "values": "sgd,adam"},
        {"name": "lr", "type": "double", "values": "0.1,0.000001,0.05"}])
    study = create_study(spec, f"sqlite:///{tmp_path / 's.db'}", "grid-order")
    space = search_space(spec)
    asked = []
    for _ in range(6):
        t = study.ask(space)
        asked.append((t.params["optimizer"], t.params["lr"]))
        study.tell(t, 0.5)
    assert asked == [("sgd", 0.1), ("sgd", 0.000001), ("sgd", 0.05), ("adam", 0.1), ("adam", 0.000001), ("adam", 0.05)]
    assert trial_counts(trial_reports(study)).succeeded == 6
    ranged = make(strategy="grid", parameters=[{"name": "n", "type": "int", "min": 1, "max": 4, "step": 1}])
    study = create_study(ranged, f"sqlite:///{tmp_path / 's.db'}", "grid-range")
    assert [study.ask(search_space(ranged)).params["n"] for _ in range(4)] == [1, 2, 3, 4]
