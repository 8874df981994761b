"""What the Prefect UI's Run form of a deployment starts from: on this machine, the train and tune deployments'
forms hold the example a newcomer runs first, so that Run, then Submit, trains the digits model. A project
member sees them empty (mlyard/prefect_door.py): their runs read their project's storage, not the examples."""

from __future__ import annotations

from pathlib import Path

from mlyard.core.names import FLOW_TRAIN, FLOW_TUNE

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (an installed wheel: site-packages)

# a checkout's examples/ (an installed wheel has none, and its forms start empty; an `examples` folder another
# package left in site-packages is not ours: a checkout is known by its infra/prefect.yaml)
EXAMPLES = PROJECT_ROOT / "examples"
CHECKOUT = (PROJECT_ROOT / "infra" / "prefect.yaml").is_file()
RUN_FORM_EXAMPLES = {f"{FLOW_TRAIN}-local": "train.yaml", f"{FLOW_TUNE}-local": "tune.yaml"}


def run_form_example(deployment_name: str) -> dict | None:
    """The parameters the Run form of `deployment_name` (a local pool's) starts from: its example spec, paths
    made absolute (a run starts in the project root, but the form shows where the code is), or None."""
    from mlyard.core.errors import MlyardError
    from mlyard.core.specs import TrainingSpec, TuningSpec, load_spec_file
    from mlyard.core.specs.common import mappings_as_pairs

    file = RUN_FORM_EXAMPLES.get(deployment_name)
    if file is None or not CHECKOUT or not (EXAMPLES / file).is_file():
        return None
    model = TuningSpec if deployment_name.startswith(f"{FLOW_TUNE}-") else TrainingSpec
    try:
        spec = load_spec_file(model, EXAMPLES / file).resolved(PROJECT_ROOT)
    except MlyardError:  # an example edited into a bad spec: its form starts empty, the stack still starts
        return None
    return {"spec": mappings_as_pairs(model, spec.model_dump(mode="json", exclude_unset=True))}
