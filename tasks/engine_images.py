"""What a runtime variant's engine runs on a cluster: its image and environment, from the stage's runtime,
the version's service-definition.toml, the values (MLYARD_RUNTIME_IMAGES) and core/runtimes.py's defaults,
in that order."""

from __future__ import annotations

from typing import Any


def with_service_definition(runtime: dict[str, Any], model: str) -> dict[str, Any]:
    """A runtime variant resource's `runtime` with the image and environment that its model version's
    service-definition.toml gives the variant (the resource's own come first); as it was without one."""
    import tempfile
    import tomllib

    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as scratch:
        try:  # the one file, wherever MLflow keeps the version's files
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/service-definition.toml",
                                                       dst_path=scratch)
            section = tomllib.loads(open(path, encoding="utf-8").read()).get(runtime["variant"]) or {}
        except Exception:  # noqa: BLE001 - no such file (or not TOML: `mlyard serve` names what is wrong in it)
            return runtime
    image = (section.get("environment") or {}).get("image")
    environ = {k: str(v) for k, v in (section.get("environ") or {}).items() if not isinstance(v, (dict, list))}
    return {**runtime, "image": runtime.get("image") or image, "environ": {**environ, **runtime["environ"]}}


def engine_image(runtime: dict[str, Any], model: str) -> str:
    """The image a variant resource's pods run ("" when none is known: cmd and nim need one named)."""
    from mlyard.core.environment import runtime_images
    from mlyard.core.runtimes import VARIANTS

    variant = VARIANTS[runtime["variant"]]
    return (with_service_definition(runtime, model).get("image") or runtime_images().get(variant.name)
            or variant.image)
