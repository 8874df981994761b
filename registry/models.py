"""The model registry, on MLflow: models, versions, aliases, parameters and lineage (DESIGN §7).

A version's framework, framework version, parameters and lineage are MLflow version tags under
`mlyard.`; aliases are MLflow aliases. The rule that a model served by an endpoint cannot be
deleted is checked here, against the catalog, before MLflow is touched.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from mlflow.exceptions import MlflowException

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.errors import AlreadyExists, ModelInUse, ModelNotFound, SpecError, TrainingNotComplete
from mlyard.core.names import (
    TAG_FRAMEWORK,
    TAG_FRAMEWORK_VERSION,
    TAG_KIND,
    TAG_LINEAGE,
    TAG_ORIGIN_URI,
    TAG_PARAMETERS,
    TAG_PROJECT,
    TAG_RUNTIME,
    TAG_SIGNATURE,
    param_arguments,
    param_environ,
)
from mlyard.registry.catalog import Catalog
from mlyard.registry.tracking import Tracking

MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    source: str
    run_id: str | None
    framework: str
    framework_version: str
    parameters: dict[str, str]
    lineage: dict[str, str]
    aliases: list[str]
    description: str
    created_at: str  # ISO 8601
    signature: dict[str, Any] | None = None  # {"inputs": [...], "outputs": [...], "source": ...} (MLflow schema JSON)
    runtime: str = ""  # how serving and batch run it, decided at registration (compiled, or why not)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    aliases: dict[str, str]
    versions: list[ModelVersionInfo] = field(default_factory=list)
    project: str = DEFAULT_PROJECT

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "aliases": self.aliases,
                "versions": [v.as_dict() for v in self.versions], "project": self.project}


def serving_env(parameters: Mapping[str, str]) -> dict[str, str]:
    """Model parameters as SCREAMING_SNAKE environment variables for the model server."""
    return param_environ(parameters)


def serving_args(parameters: Mapping[str, str]) -> list[str]:
    """Model parameters as `--key value` arguments for the model server."""
    return param_arguments(parameters)


def detect_framework(model_dir: Path) -> tuple[str, str]:
    """(framework, version) from an MLflow model's MLmodel file; ('custom', '') without one."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return "custom", ""
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    for name, conf in flavors.items():
        if name == "python_function":
            continue
        version = next((str(v) for k, v in (conf or {}).items() if k.endswith("_version") and k != "pickled_model_version"), "")
        return name, version
    return ("pyfunc", str(flavors["python_function"].get("python_version", ""))) if "python_function" in flavors else ("custom", "")


def signature_json(signature) -> dict[str, Any]:
    """An MLflow ModelSignature as MLflow's schema JSON: {"inputs": [...], "outputs": [...] or None}."""
    data = signature.to_dict()
    return {"inputs": json.loads(data["inputs"]), "outputs": json.loads(data["outputs"]) if data.get("outputs") else None}


def declared_signature(model_dir: Path) -> dict[str, Any] | None:
    """The signature an MLflow model's MLmodel declares, or None."""
    from mlflow.models import Model

    if not (model_dir / "MLmodel").is_file():
        return None
    signature = Model.load(str(model_dir)).signature
    return None if signature is None else {**signature_json(signature), "source": "declared in MLmodel"}


class ModelRegistry:
    """`infer_signature(model_dir)` gives a signature for a model whose MLmodel declares none (the
    platform passes the model loader's, which reads it off a scikit-learn estimator)."""

    def __init__(self, tracking: Tracking, catalog: Catalog,
                 infer_signature: Callable[[Path], dict[str, Any] | None] | None = None,
                 prepare: Callable[[Path], str | None] | None = None):
        """`prepare(model_dir)`: done once to a new version's files (compiling a scikit-learn model for
        serving and batch); what it says becomes the version's `mlyard.runtime` tag."""
        self.tracking, self.catalog = tracking, catalog
        self.client = tracking.client
        self.infer_signature = infer_signature
        self.prepare = prepare

    def _prepared(self, model_dir: Path) -> str | None:
        if self.prepare is None:
            return None
        try:
            return self.prepare(model_dir)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be prepared is still registered
            return f"not prepared: {type(exc).__name__}: {exc}"[:500]

    def _signature(self, model_dir: Path) -> dict[str, Any] | None:
        if not model_dir.is_dir():
            return None
        found = declared_signature(model_dir)
        if found is None and self.infer_signature is not None:
            found = self.infer_signature(model_dir)
        return found

    # -- creating ------------------------------------------------------------------------------

    def create_from_training(self, name: str, training_id: str, status: str, run_id: str | None, *,
                             parameters: Mapping[str, str] | None = None, description: str = "",
                             framework: str | None = None, framework_version: str | None = None,
                             kind: str = "training", lineage: Mapping[str, str] | None = None,
                             project: str = DEFAULT_PROJECT) -> ModelVersionInfo:
        """A new version of `name` from a training's model (or a tuning's best trial, `kind="tuning"`).
        Refused unless it is COMPLETE."""
        _check_name(name)
        self._claim(name, project)
        if not status.startswith("COMPLETE") or run_id is None:
            raise TrainingNotComplete(training_id, status, kind)
        run = self.tracking.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.tracking.download(run_id, MODEL_ARTIFACT, Path(tmp))
            except (MlflowException, OSError) as exc:
                raise TrainingNotComplete(training_id, f"{status} but without a saved model (EM_MODEL_DIR was empty)",
                                          kind) from exc
            found_fw, found_ver = detect_framework(local)
            signature = self._signature(local)
            runtime = self._prepared(local)
        lineage = {f"{kind}_id": training_id, "run_id": run_id, "experiment_id": run.experiment_id, **(lineage or {})}
        return self._create(name, f"{run.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}", run_id,
                            framework or found_fw, framework_version or found_ver,
                            parameters or {}, lineage, description, signature, runtime, project)

    def create_from_directory(self, name: str, model_dir: Path, origin_uri: str, *,
                              parameters: Mapping[str, str] | None = None, description: str = "",
                              framework: str | None = None, framework_version: str | None = None,
                              project: str = DEFAULT_PROJECT) -> ModelVersionInfo:
        """A new version from an external artifact already staged in `model_dir` (copied into MLflow)."""
        _check_name(name)
        self._claim(name, project)
        if not model_dir.exists() or (model_dir.is_dir() and not any(model_dir.iterdir())):
            raise SpecError("artifact_uri", origin_uri, "a directory (or file) holding the model; it is empty")
        found_fw, found_ver = detect_framework(model_dir) if model_dir.is_dir() else ("custom", "")
        signature = self._signature(model_dir)
        runtime = self._prepared(model_dir)
        run_id = self.tracking.start_run("models", f"import-{name}", {TAG_KIND: "model-import", TAG_ORIGIN_URI: origin_uri})
        try:
            if model_dir.is_dir():
                self.tracking.log_artifacts(run_id, model_dir, MODEL_ARTIFACT)
            else:
                self.tracking.log_artifact(run_id, model_dir, MODEL_ARTIFACT)
        except BaseException:
            self.tracking.end_run(run_id, "FAILED")
            raise
        self.tracking.end_run(run_id, "FINISHED")
        run = self.tracking.get_run(run_id)
        return self._create(name, f"{run.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}", run_id,
                            framework or found_fw, framework_version or found_ver, parameters or {},
                            {"origin_uri": origin_uri, "run_id": run_id}, description, signature, runtime, project)

    def _claim(self, name: str, project: str) -> None:
        """A new version of `name` goes to `project`: refused when the model is another project's."""
        try:
            if self.project_of(name) != project:
                raise AlreadyExists("model", name)  # names are the platform's: the other one keeps it
        except ModelNotFound:
            pass

    def project_of(self, name: str) -> str:
        try:
            rm = self.client.get_registered_model(name)
        except MlflowException as exc:
            raise ModelNotFound(name) from exc
        return (rm.tags or {}).get(TAG_PROJECT, DEFAULT_PROJECT)

    def _create(self, name, source, run_id, framework, framework_version, parameters, lineage, description,
                signature=None, runtime=None, project=DEFAULT_PROJECT):
        try:
            self.client.create_registered_model(name, tags={TAG_PROJECT: project})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = {TAG_FRAMEWORK: framework, TAG_FRAMEWORK_VERSION: framework_version or "",
                TAG_PARAMETERS: json.dumps(dict(parameters)), TAG_LINEAGE: json.dumps(lineage)}
        if signature is not None:
            text = json.dumps(signature)
            if len(text) > MAX_TAG_CHARS:  # a very wide table: the MLmodel keeps the whole schema
                text = json.dumps({"inputs": f"{len(signature['inputs'])} columns", "outputs": None,
                                   "source": f"{signature.get('source', '')}; too long for a tag, see MLmodel"})
            tags[TAG_SIGNATURE] = text
        if runtime:
            tags[TAG_RUNTIME] = runtime
        mv = self.client.create_model_version(name, source, run_id=run_id, tags=tags, description=description or None)
        return self.get_version(name, mv.version)

    # -- reading -------------------------------------------------------------------------------

    def list(self, projects: list[str] | None = None) -> list[ModelInfo]:
        """Every model, or those of `projects`."""
        found = [self.get(m.name, with_versions=True) for m in self.client.search_registered_models(max_results=1000)]
        return found if projects is None else [m for m in found if m.project in projects]

    def get(self, name: str, with_versions: bool = True) -> ModelInfo:
        try:
            rm = self.client.get_registered_model(name)
        except MlflowException as exc:
            raise ModelNotFound(name) from exc
        aliases = {str(alias): str(version) for alias, version in dict(rm.aliases or {}).items()}
        versions = []
        if with_versions:  # MLflow's version search leaves aliases out: they come from the model
            versions = sorted((replace(self._info(v), aliases=sorted(a for a, ver in aliases.items() if ver == str(v.version)))
                               for v in self.client.search_model_versions(f"name = '{name}'")),
                              key=lambda v: int(v.version))
        return ModelInfo(rm.name, rm.description or "", aliases, versions,
                         (rm.tags or {}).get(TAG_PROJECT, DEFAULT_PROJECT))

    def get_version(self, name: str, version: str | int) -> ModelVersionInfo:
        try:
            return self._info(self.client.get_model_version(name, str(version)))
        except MlflowException as exc:
            raise ModelNotFound(f"{name}/{version}") from exc

    def resolve(self, ref: str) -> ModelVersionInfo:
        """`name@alias`, `name/version` or `name` (its newest version)."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            try:
                return self._info(self.client.get_model_version_by_alias(name, alias))
            except MlflowException as exc:
                raise ModelNotFound(ref) from exc
        if "/" in ref:
            name, version = ref.split("/", 1)
            return self.get_version(name, version)
        versions = self.get(ref).versions
        if not versions:
            raise ModelNotFound(ref)
        return versions[-1]

    # -- changing ------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str | int) -> ModelVersionInfo:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", alias) or re.fullmatch(r"v\d+", alias, re.I) or alias.lower() == "latest":
            raise SpecError("alias", alias, "letters, digits, '_' and '-', starting with a letter; "
                            "not 'latest' or v<number> (those name versions)")
        self.get_version(name, version)
        self.client.set_registered_model_alias(name, alias, str(version))
        return self.get_version(name, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.get(name, with_versions=False)
        self.client.delete_registered_model_alias(name, alias)

    def rename(self, name: str, new_name: str) -> ModelInfo:
        _check_name(new_name)
        self.get(name, with_versions=False)
        if self.catalog.endpoints_serving(name):
            raise ModelInUse(name, None, self.catalog.endpoints_serving(name))
        try:
            self.client.rename_registered_model(name, new_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                raise AlreadyExists("model", new_name) from exc
            raise
        return self.get(new_name)

    def describe(self, name: str, description: str, version: str | None = None) -> None:
        self.get(name, with_versions=False)
        if version is None:
            self.client.update_registered_model(name, description)
        else:
            self.get_version(name, version)
            self.client.update_model_version(name, str(version), description)

    def delete(self, name: str, version: str | None = None) -> None:
        """Delete a model (or one version). Refused while an endpoint stage serves it."""
        if version is None:
            self.get(name, with_versions=False)
        else:
            self.get_version(name, version)
        serving = self.catalog.endpoints_serving(name, version)
        if serving:
            raise ModelInUse(name, version, serving)
        if version is None:
            self.client.delete_registered_model(name)
        else:
            self.client.delete_model_version(name, str(version))

    def _info(self, mv) -> ModelVersionInfo:
        tags = mv.tags or {}
        return ModelVersionInfo(
            name=mv.name, version=str(mv.version), source=mv.source, run_id=mv.run_id or None,
            framework=tags.get(TAG_FRAMEWORK, ""), framework_version=tags.get(TAG_FRAMEWORK_VERSION, ""),
            parameters=json.loads(tags.get(TAG_PARAMETERS, "{}")), lineage=json.loads(tags.get(TAG_LINEAGE, "{}")),
            aliases=list(getattr(mv, "aliases", []) or []), description=mv.description or "",
            created_at=datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, timezone.utc).isoformat(timespec="seconds"),
            signature=json.loads(tags[TAG_SIGNATURE]) if TAG_SIGNATURE in tags else None,
            runtime=tags.get(TAG_RUNTIME, ""),
        )


def _check_name(name: str) -> None:
    if not NAME.match(name or ""):
        raise SpecError("name", name, "a model name of letters, digits, '_', '.', '-' (at most 100), starting with a letter or digit")
