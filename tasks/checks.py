"""Checks of a spec against the world, made before a run is created (by the CLI and the Python API)
and again by the flow itself (a run from the Prefect UI skips the first). Plain functions: no Prefect.

Each raises SpecError naming the field, the value and what to do: a missing entry point, dataset,
input, model or alias is refused in one line before anything starts.
"""

from __future__ import annotations

from pathlib import Path

from mlyard.core.errors import ModelNotFound, SpecError, StorageNotFound
from mlyard.core.specs import TrainingSpec, is_mlflow_uri, is_registry_ref
from mlyard.core.uris import parse_uri


def training_inputs(storage, spec: TrainingSpec) -> None:
    """Every input location holds something, the entry point is inside source_uri, outputs resolve."""
    inputs = {"source_uri": spec.source_uri, "checkpoint_input_uri": spec.checkpoint_input_uri,
              **{f"datasets.{k}": v for k, v in spec.datasets.items()}}
    for field, uri in inputs.items():
        if uri:
            try:
                storage.check(uri, field)
            except StorageNotFound as exc:
                raise SpecError(field, uri, "a location that exists; nothing is stored there") from exc
    entry = f"{spec.source_uri.rstrip('/')}/{spec.entry_point}"
    if not storage.exists(entry, "entry_point"):
        held = storage.list(spec.source_uri, field="source_uri")
        shown = ", ".join(sorted(h for h in held if "/" not in h)[:20]) or "no files at its top"
        raise SpecError("entry_point", spec.entry_point, f"a file inside source_uri {spec.source_uri}; it holds: {shown}")
    for field in ("output_uri", "checkpoint_output_uri"):
        uri = getattr(spec, field)
        if uri:
            storage.resolve(uri, field)


def model_reference(storage, models, model: str) -> str:
    """The model as a pinned URI (an alias resolved to its version); a path or URI must hold something."""
    try:
        if is_registry_ref(model):
            mv = models.resolve(model)
            return f"models:/{mv.name}/{mv.version}"
        if model.startswith("models:/"):
            ref = model.removeprefix("models:/")
            mv = models.resolve(ref)
            return f"models:/{mv.name}/{mv.version}"
    except ModelNotFound as exc:
        raise SpecError("model", model, f"a registered model version or alias ({exc})") from exc
    if is_mlflow_uri(model):  # runs:/ is checked when the model is loaded
        return model
    try:
        storage.check(model, "model")
    except StorageNotFound as exc:
        raise SpecError("model", model, "a directory holding an MLflow model; nothing is stored there") from exc
    return model


def input_location(storage, input_uri: str) -> None:
    try:
        storage.check(input_uri, "input_uri")
    except StorageNotFound as exc:
        raise SpecError("input_uri", input_uri, "a file or directory that exists; nothing is stored there") from exc


def output_outside_input(input_uri: str, output_uri: str) -> None:
    """Refuse an output_uri inside input_uri: its predictions would be read as input by the next job."""
    src, out = parse_uri(input_uri, "input_uri"), parse_uri(output_uri, "output_uri")
    if src.kind != out.kind:
        return
    if src.kind == "local" and src.nas_id == out.nas_id and src.path is not None and out.path is not None:
        inside = out.path.resolve().is_relative_to(src.path.resolve())
    else:
        prefix = src.key.rstrip("/")
        inside = (src.bucket == out.bucket and src.endpoint == out.endpoint
                  and (not prefix or out.key.rstrip("/") == prefix or out.key.startswith(prefix + "/")))
    if inside:
        raise SpecError("output_uri", output_uri, f"a location outside input_uri {input_uri}: predictions written "
                        "inside it would be read as input by the next job")


def output_free(output_uri: str, me: str | None = None) -> None:
    """Refuse a batch inference whose output_uri another running batch inference writes: two of them
    would do the same work twice into one place. Of two that run at once, the one that started first
    holds the output (`me`: this run's own flow run id, inside the flow; None: a command checking
    before it queues a run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from mlyard.core.errors import InUse
    from mlyard.core.names import FLOW_BATCH

    wanted = _output_key(output_uri)
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_BATCH])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.CANCELLING]))), limit=200)
    writers = [r for r in running if _output_key(str((r.parameters.get("spec") or {}).get("output_uri", ""))) == wanted]
    mine = next((r for r in writers if str(r.id) == me), None)
    first = min(writers, key=lambda r: (r.start_time or r.created, str(r.id)), default=None)
    if first is None or first is mine:
        return
    began = first.start_time or first.created
    since = began.strftime("%H:%M:%S UTC") if began is not None else "?"
    raise InUse("output_uri", output_uri, [f"batch inference {first.id} ({first.name}, running since {since})"],
                f"wait for it to end (`mlyard batches show {first.id}`), stop it, or give another output_uri (a run "
                "whose process died frees it within a minute, when Prefect marks it crashed)")


def _output_key(uri: str) -> str:
    return uri.rstrip("/") if "://" in uri else str(Path(uri).expanduser().resolve()) if uri else ""
