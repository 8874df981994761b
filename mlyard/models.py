"""Registered models as the CLI, Python and the mlyard API change them, in the caller's project: a version
from a COMPLETE training or tuning the caller sees, or from an artifact (a member's: under their project's
storage), aliases, descriptions, renames and deletes, each checked against the caller's role in the
model's project (core/access.py) and recorded in the audit trail (the commands are mlyard/commands.py's).
A model of another project does not exist for the caller."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlyard.core.access import current
from mlyard.core.errors import ModelNotFound, SpecError


def visible(models: Any, name: str) -> Any:
    """The model `name` when the caller sees its project, else ModelNotFound."""
    found = models.get(name, with_versions=False)
    if not current().sees(found.project):
        raise ModelNotFound(name)
    return found


def _may(models: Any, name: str, role: str, action: str) -> None:
    current().need(visible(models, name).project, role, action, lambda: ModelNotFound(name))


def create(name: str, from_training: str | None = None, from_tuning: str | None = None,
           artifact_uri: str | None = None, framework: str | None = None, framework_version: str | None = None,
           parameters: dict[str, str] | None = None, description: str = "", alias: str | None = None) -> dict[str, Any]:
    """A new version of `name`, in the caller's project, from exactly one of a COMPLETE training, a COMPLETE
    tuning's best trial, or an artifact (a path or URI the platform reads)."""
    from mlyard.core.links import model_links
    from mlyard.core.names import TAG_BEST_RUN_ID, TAG_KIND, TAG_TUNING_ID
    from mlyard.teams import acting_editor
    from mlyard.warm_api import platform

    if sum(map(bool, (from_training, from_tuning, artifact_uri))) != 1:
        raise SpecError("--from-training/--from-tuning/--artifact-uri", None, "give exactly one of them")
    project = acting_editor("registering a model")
    p, parameters = platform(), {k: str(v) for k, v in (parameters or {}).items()}
    common: dict[str, Any] = {"parameters": parameters, "description": description, "framework": framework,
                              "framework_version": framework_version, "project": project}
    if from_tuning:
        from mlyard.tunings import get_tuning

        t = get_tuning(from_tuning)  # the caller's projects' alone; the whole id, when a prefix was given
        parent = p.tracking.find_run({TAG_TUNING_ID: t.id, TAG_KIND: "tuning"})
        best = p.tracking.get_run(parent).tags.get(TAG_BEST_RUN_ID) if parent else None
        best = None if best in (None, "None") else best
        mv = p.models.create_from_training(name, t.id, t.status, best, kind="tuning",
                                           lineage={"best_trial_run_id": best or ""}, **common)
    elif from_training:
        from mlyard.trainings import get_training

        t = get_training(from_training)
        run = p.tracking.find_training_run(t.id)
        mv = p.models.create_from_training(name, t.id, t.status, run.run_id if run else None, **common)
    else:
        assert artifact_uri is not None
        if not current().admin:  # a member's artifact is their project's (the platform reads it for them)
            from mlyard.core.uris import project_prefix, within

            if not within(artifact_uri, project_prefix(p.settings, project), "artifact_uri"):
                raise SpecError("artifact_uri", artifact_uri, f"a location under project {project}'s storage, "
                                f"{project_prefix(p.settings, project)}/ (the CLI uploads a local folder there for you)")
        with tempfile.TemporaryDirectory() as tmp:
            local = p.storage.stage_in(artifact_uri, Path(tmp) / "model", "--artifact-uri")
            mv = p.models.create_from_directory(name, local, artifact_uri, **common)
    if alias:
        mv = p.models.set_alias(name, alias, mv.version)
    return {**mv.as_dict(), "project": project, "links": model_links(p.settings, mv.name, mv.version, mv.lineage)}


def rename(name: str, new_name: str) -> dict[str, Any]:
    from mlyard.warm_api import platform

    models = platform().models
    _may(models, name, "editor", "renaming a model")
    return models.rename(name, new_name).as_dict()


def describe(name: str, description: str, version: str | None = None) -> dict[str, Any]:
    from mlyard.warm_api import platform

    models = platform().models
    _may(models, name, "editor", "describing a model")
    models.describe(name, description, version)
    return {"name": name, "version": version, "description": description}


def alias(name: str, alias: str, version: str | None = None, delete: bool = False) -> dict[str, Any]:
    """Point `alias` at `version`, or remove it (`delete`)."""
    from mlyard.warm_api import platform

    models = platform().models
    _may(models, name, "editor", "moving a model's alias")
    if delete:
        models.delete_alias(name, alias)
        return {"name": name, "alias": alias, "deleted": True}
    if version is None:
        raise SpecError("version", None, "the version the alias points at")
    return models.set_alias(name, alias, version).as_dict()


def delete(name: str, version: str | None = None) -> dict[str, Any]:
    from mlyard.warm_api import platform

    models = platform().models
    _may(models, name, "owner", "deleting a model")
    models.delete(name, version)
    return {"deleted": name, "version": version}


def compare(refs: list[str]) -> dict[str, Any]:
    """Versions side by side: each one's metrics and hyperparameters, read from the MLflow run that made it
    (a tuning's version: its best trial's run), with every metric any of them has, in order. A version
    registered from a folder has no run: its metrics are empty."""
    from mlyard.warm_api import platform

    if len(refs) < 2:
        raise SpecError("refs", refs, "two or more versions (name, name/version or name@alias)")
    p, rows = platform(), []
    for ref in refs:
        visible(p.models, ref.split("@", 1)[0].split("/", 1)[0])  # another project's: ModelNotFound
        mv = p.models.resolve(ref)
        run_id = mv.lineage.get("run_id") or mv.run_id
        run = p.tracking.get_run(run_id) if run_id else None
        rows.append({"ref": ref, "model": f"{mv.name}/{mv.version}", "aliases": mv.aliases,
                     "framework": mv.framework, "run_id": run_id, "training_id": mv.lineage.get("training_id"),
                     "metrics": run.metrics if run else {}, "params": run.params if run else {}})
    metrics = sorted({name for row in rows for name in row["metrics"]})
    return {"versions": rows, "metrics": metrics}
