"""The example pipelines, written with the KFP SDK. `python examples/pipelines/example.py` compiles them
to the IR YAML files beside it (what `mlyard pipelines upload` takes).

example.yaml (mlyard-example): parameters, an artifact passed between steps (a dataset, a model,
metrics), a loop over thresholds, a condition, and an exit handler that runs whatever happens; with
`fail: true` a step fails and the exit handler still reports. Its first step is handed the time the
run was scheduled for (KFP's schedule-time placeholder: a schedule's slot).
container.yaml (container-echo): one step in a container image of its own: it needs a container runtime
(a Kubeflow Pipelines server), so it is refused here with the reason.
"""

from pathlib import Path

from kfp import compiler, dsl

BASE = "python:3.11"  # the image a KFP server would run the steps in; here they run in mlyard's Python


@dsl.component(base_image=BASE)
def make_data(rows: int, seed: int, scheduled_for: str, data: dsl.Output[dsl.Dataset]):
    """Write `rows` noisy points of y = 2x + 1 as CSV (a scheduled run is told its slot)."""
    import random

    print(f"data for the run scheduled at {scheduled_for}")
    data.metadata["scheduled_for"] = scheduled_for
    rng = random.Random(seed)
    with open(data.path, "w") as fh:
        fh.write("x,y\n")
        for _ in range(rows):
            x = rng.uniform(-1, 1)
            fh.write(f"{x},{2 * x + 1 + rng.gauss(0, 0.1)}\n")
    data.metadata["rows"] = rows


@dsl.component(base_image=BASE)
def fit(data: dsl.Input[dsl.Dataset], epochs: int, model: dsl.Output[dsl.Model],
        metrics: dsl.Output[dsl.Metrics]) -> float:
    """Fit y = a x + b by gradient descent; return R^2."""
    import json

    pts = [tuple(map(float, line.split(","))) for line in open(data.path).read().splitlines()[1:]]
    a = b = 0.0
    for _ in range(epochs * 50):
        ga = sum(2 * (a * x + b - y) * x for x, y in pts) / len(pts)
        gb = sum(2 * (a * x + b - y) for x, y in pts) / len(pts)
        a, b = a - 0.3 * ga, b - 0.3 * gb
    mean = sum(y for _, y in pts) / len(pts)
    ss_res = sum((a * x + b - y) ** 2 for x, y in pts)
    ss_tot = sum((y - mean) ** 2 for _, y in pts)
    r2 = 1 - ss_res / ss_tot
    with open(model.path, "w") as fh:
        json.dump({"a": a, "b": b}, fh)
    metrics.log_metric("r2", r2)
    print(f"epochs={epochs} a={a:.3f} b={b:.3f} r2={r2:.4f}")
    return r2


@dsl.component(base_image=BASE)
def check(r2: float, threshold: float) -> str:
    verdict = "pass" if r2 >= threshold else "below"
    print(f"threshold {threshold}: {verdict}")
    return verdict


@dsl.component(base_image=BASE)
def publish(model: dsl.Input[dsl.Model], card: dsl.Output[dsl.Artifact]):
    with open(card.path, "w") as fh:
        fh.write("model card\n" + open(model.path).read())


@dsl.component(base_image=BASE)
def explode(message: str):
    raise RuntimeError(message)


@dsl.component(base_image=BASE)
def report(status: dsl.PipelineTaskFinalStatus) -> str:
    print(f"pipeline {status.pipeline_job_resource_name} ended {status.state}")
    return status.state


@dsl.pipeline(name="mlyard-example", description="Data, fit, checks in a loop, a condition, an exit handler.")
def example(rows: int = 200, epochs: int = 3, thresholds: list = [0.5, 0.9], seed: int = 7,  # noqa: B006 - KFP reads it
            fail: bool = False):
    done = report()
    with dsl.ExitHandler(done, name="guarded"):
        data = make_data(rows=rows, seed=seed, scheduled_for=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER)
        fitted = fit(data=data.outputs["data"], epochs=epochs)
        with dsl.ParallelFor(thresholds, name="thresholds") as threshold:
            check(r2=fitted.outputs["Output"], threshold=threshold)
        with dsl.If(fitted.outputs["Output"] > 0.5, name="good-fit"):
            publish(model=fitted.outputs["model"])
        with dsl.If(fail == True, name="asked-to-fail"):  # noqa: E712 - a KFP condition, not a Python test
            explode(message="failing on purpose (fail=true)")


@dsl.container_component
def echo(text: str):
    return dsl.ContainerSpec(image="alpine:3.20", command=["echo"], args=[text])


@dsl.pipeline(name="container-echo", description="One step in an image of its own (needs a container runtime).")
def container(text: str = "hello"):
    echo(text=text)


if __name__ == "__main__":
    here = Path(__file__).parent
    compiler.Compiler().compile(example, str(here / "example.yaml"))
    compiler.Compiler().compile(container, str(here / "container.yaml"))
