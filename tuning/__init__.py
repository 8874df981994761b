"""The search engine: a TuningSpec mapped onto an Optuna study, with Katib's trial states and reasons.

Pure: imports Optuna, never Prefect. `mlyard.tuning.loop` runs the trial loop; the `trial` task (tasks/trials.py)
runs one trial.
"""

from mlyard.tuning.engine import (
    KatibState,
    TrialCounts,
    TrialReport,
    best_value,
    create_study,
    decide,
    grid_size,
    grid_values,
    objective_parsers,
    recover_interrupted,
    search_space,
    trial_counts,
)

__all__ = [
    "KatibState", "TrialCounts", "TrialReport", "best_value", "create_study", "decide", "grid_size",
    "grid_values", "objective_parsers", "recover_interrupted", "search_space", "trial_counts",
]
