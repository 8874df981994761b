"""`mlyard demo` (what `make demo` runs): the spine end to end on the embedded stack.

1. Start the embedded stack (Prefect server, local pool + worker, deployments).
2. Train the example algorithm (examples/sklearn_digits) through the training flow.
3. Register its model in MLflow as `digits`, alias `champion`.
4. Tune its learning rate (grid, median early stopping stops the bad one); register the best trial.
5. Start the MLflow UI and print what was done and where to look.
"""

from __future__ import annotations

from rich.console import Console

from mlyard import stack
from mlyard.errors import MlyardError
from mlyard.settings import Settings
from mlyard.stack import PROJECT_ROOT

SPEC = PROJECT_ROOT / "examples" / "train.yaml"
TUNE_SPEC = PROJECT_ROOT / "examples" / "tune.yaml"


def run(settings: Settings, out: Console, keep_running: bool = True) -> None:
    out.rule("1. embedded stack")
    state = stack.up(settings, echo=out.print)
    stack.connect(settings)

    out.rule("2. training (examples/sklearn_digits)")
    from flows.platform import Platform
    from flows.training import train
    from mlyard.specs import TrainingSpec, load_spec_file

    spec = load_spec_file(TrainingSpec, SPEC)
    spec = spec.with_overrides({"source_uri": str(PROJECT_ROOT / "examples" / "sklearn_digits")})
    state_ = train(spec, return_state=True)
    if not state_.is_completed():
        raise MlyardError(f"the demo training did not complete: {state_.message}")
    result = state_.result()

    out.rule("3. model registry")
    p = Platform(settings)
    mv = p.models.create_from_training("digits", result.training_id, "COMPLETE", result.run_id,
                                       parameters={"batch_size": "32"},
                                       description="SGD classifier on scikit-learn's digits (mlyard demo)")
    p.models.set_alias("digits", "champion", mv.version)
    out.print(f"registered digits version {mv.version} ({mv.framework} {mv.framework_version}), alias champion")

    out.rule("4. hyperparameter tuning (examples/tune.yaml)")
    import yaml

    from flows.tuning import tune
    from mlyard.specs import TuningSpec, load_spec
    from mlyard.tunings import trials

    data = yaml.safe_load(TUNE_SPEC.read_text())
    data["training"]["source_uri"] = str(PROJECT_ROOT / "examples" / "sklearn_digits")
    tuned = tune(load_spec(TuningSpec, data, source=str(TUNE_SPEC)))
    for t in sorted(trials(settings.catalog_db_url, tuned.tuning_id), key=lambda r: r["number"]):
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        out.print(f"  trial {t['number']}: learning_rate={t['params'].get('learning_rate')}  {t['state']:<14} "
                  f"accuracy={value}  {t['reason'] or ''}")
    tv = p.models.create_from_training("digits-tuned", tuned.tuning_id, "COMPLETE", tuned.best_run_id, kind="tuning",
                                       description=f"best trial of tuning {spec.name}")
    out.print(f"registered digits-tuned version {tv.version} from trial {tuned.best_trial} ({tuned.reason})")

    out.rule("5. where to look")
    mlflow_url = stack.start_mlflow_ui(settings, echo=out.print)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    out.print(f"""[bold]Done.[/bold]
  training     {spec.name}  id {result.training_id}  COMPLETE  ({metrics})
  MLflow run   {result.run_id} in experiment '{result.experiment}'
  model        digits version {mv.version}  (digits@champion)
  tuning       {tuned.tuning_id}  COMPLETE ({tuned.reason}), best accuracy={tuned.best_value:.4f}
               {tuned.best_params}  ->  model digits-tuned version {tv.version}

  Prefect UI   {state.ui_url}/runs/flow-run/{result.training_id}
               press Run on deployment train/local to train again from the UI
  MLflow UI    {mlflow_url}

  Try:  .venv/bin/mlyard trainings list
        .venv/bin/mlyard models show digits
        .venv/bin/mlyard tunings trials {tuned.tuning_id}
        .venv/bin/mlyard train -f examples/train.yaml --submit
        .venv/bin/mlyard down      (stops the stack; state stays in {settings.home_dir})""")
    if not keep_running:
        stack.down(settings, echo=out.print)
