"""`mlyard models ...`: the model registry (MLflow): models, versions, aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from core.errors import SpecError
from core.names import TAG_BEST_RUN_ID, TAG_KIND, TAG_TUNING_ID
from mlyard.cli.common import JSON, ask, emit, guard, out, parse_sets, platform, typer_app

app = typer_app("The model registry (MLflow): models, versions, aliases.")


def signature_text(signature: dict[str, Any] | None) -> str:
    """One line for people: `inputs: 64 x float64 tensor; outputs: int64 tensor`."""
    if not signature:
        return "none"

    def side(schema) -> str:
        if not schema:
            return "?"
        if isinstance(schema, str):
            return schema
        if schema[0].get("type") == "tensor":
            spec = schema[0].get("tensor-spec", {})
            shape = [d for d in spec.get("shape", []) if d != -1]
            return f"{' x '.join(map(str, shape)) + ' x ' if shape else ''}{spec.get('dtype', '?')} tensor"
        cols = [f"{c.get('name', '?')}:{c.get('type', '?')}" for c in schema]
        return f"{len(cols)} columns ({', '.join(cols[:4])}{', ...' if len(cols) > 4 else ''})"

    return f"inputs: {side(signature.get('inputs'))}; outputs: {side(signature.get('outputs'))}"


@app.command("create")
def models_create(
    name: str,
    from_training: Optional[str] = typer.Option(None, "--from-training", help="Training id (must be COMPLETE)."),
    from_tuning: Optional[str] = typer.Option(None, "--from-tuning", help="Tuning id (COMPLETE): its best trial."),
    artifact_uri: Optional[str] = typer.Option(None, "--artifact-uri", help="External model: path, s3://, obs://, nas://."),
    framework: Optional[str] = typer.Option(None, help="Framework (detected from an MLflow model when omitted)."),
    framework_version: Optional[str] = typer.Option(None, "--framework-version"),
    params: Optional[list[str]] = typer.Option(None, "--param", help="Serving parameter key=value (repeatable)."),
    description: str = typer.Option("", help="Version description."),
    alias: Optional[str] = typer.Option(None, help="Point this alias at the new version."),
    as_json: bool = JSON,
) -> None:
    """Create a model version from a COMPLETE training, a COMPLETE tuning's best trial, or an external artifact."""
    import tempfile

    def go():
        from core.links import model_links
        from core.uris import absolute
        from mlyard.trainings import get_training

        if sum(map(bool, (from_training, from_tuning, artifact_uri))) != 1:
            raise SpecError("--from-training/--from-tuning/--artifact-uri", None, "give exactly one of them")
        parameters = {k: str(v) for k, v in parse_sets(params).items()}
        p = platform()
        if from_tuning:
            from mlyard.tunings import get_tuning

            t = get_tuning(from_tuning)  # the whole id: from_tuning may be a unique prefix of it
            parent = p.tracking.find_run({TAG_TUNING_ID: t.id, TAG_KIND: "tuning"})
            best = p.tracking.get_run(parent).tags.get(TAG_BEST_RUN_ID) if parent else None
            best = None if best in (None, "None") else best
            mv = p.models.create_from_training(name, t.id, t.status, best, parameters=parameters,
                                               description=description, framework=framework,
                                               framework_version=framework_version, kind="tuning",
                                               lineage={"best_trial_run_id": best or ""})
        elif from_training:
            t = get_training(from_training)  # the whole id: from_training may be a unique prefix of it
            run = p.tracking.find_training_run(t.id)
            mv = p.models.create_from_training(name, t.id, t.status, run.run_id if run else None,
                                               parameters=parameters, description=description,
                                               framework=framework, framework_version=framework_version)
        else:
            uri = absolute(artifact_uri, Path.cwd())
            with tempfile.TemporaryDirectory() as tmp:
                local = p.storage.stage_in(uri, Path(tmp) / "model", "--artifact-uri")
                mv = p.models.create_from_directory(name, local, uri, parameters=parameters,
                                                    description=description, framework=framework,
                                                    framework_version=framework_version)
        if alias:
            mv = p.models.set_alias(name, alias, mv.version)
        return {**mv.as_dict(), "links": model_links(p.settings, mv.name, mv.version, mv.lineage)}

    emit(guard(go), as_json)


@app.command("list")
def models_list(as_json: bool = JSON) -> None:
    """Models with their newest version and aliases."""
    data = []
    for m in guard(lambda: ask("models_list")):
        last = m["versions"][-1] if m["versions"] else None
        data.append({"name": m["name"], "versions": len(m["versions"]), "latest": last["version"] if last else None,
                     "framework": last["framework"] if last else None, "aliases": m["aliases"],
                     "description": m["description"]})
    if not as_json:
        for r in data:
            r["aliases"] = ", ".join(f"{a}->{v}" for a, v in r["aliases"].items())
    emit(data, as_json, ["name", "versions", "latest", "framework", "aliases", "description"],
         empty="no models yet: `mlyard models create NAME --from-training ID`")


@app.command("show")
def models_show(ref: str = typer.Argument(..., help="name, name/version or name@alias"), as_json: bool = JSON) -> None:
    """A model with all its versions, or one version."""
    data = guard(lambda: ask("models_show", ref=ref))
    if as_json:
        emit(data, as_json)
        return
    if "versions" not in data:
        emit({**data, "signature": signature_text(data["signature"])}, False)
        return
    aliases = ", ".join(f"{a}->{v}" for a, v in data["aliases"].items()) or "none"
    out.print(f"[bold]{data['name']}[/bold] {data['description']}  aliases: {aliases}  MLflow: {data['links']['mlflow']}")
    emit([{**v, "aliases": ", ".join(v["aliases"]), "parameters": json.dumps(v["parameters"]),
           "lineage": json.dumps(v["lineage"]), "signature": signature_text(v["signature"])} for v in data["versions"]],
         False, ["version", "framework", "framework_version", "aliases", "signature", "parameters", "lineage",
                 "created_at", "source"],
         empty="no versions yet")


@app.command("rename")
def models_rename(name: str, new_name: str) -> None:
    """Rename a model."""
    guard(lambda: platform().models.rename(name, new_name))
    out.print(f"renamed {name} -> {new_name}")


@app.command("describe")
def models_describe(name: str, description: str, version: Optional[str] = typer.Option(None, help="Describe this version only.")) -> None:
    """Set the description of a model (or of one version)."""
    guard(lambda: platform().models.describe(name, description, version))
    out.print("updated")


@app.command("alias")
def models_alias(name: str, alias: str, version: Optional[str] = typer.Argument(None, help="Version; omit with --delete."),
                 delete: bool = typer.Option(False, "--delete", help="Remove the alias.")) -> None:
    """Point an alias (e.g. champion) at a version, or remove it."""
    def go():
        p = platform()
        if delete:
            p.models.delete_alias(name, alias)
            return f"removed alias {alias} of {name}"
        if version is None:
            raise SpecError("version", None, "the version the alias points at")
        p.models.set_alias(name, alias, version)
        return f"{name}@{alias} -> version {version}"

    out.print(guard(go))


@app.command("delete")
def models_delete(name: str, version: Optional[str] = typer.Option(None, help="Delete only this version.")) -> None:
    """Delete a model or a version; refused while an endpoint serves it."""
    guard(lambda: platform().models.delete(name, version))
    out.print(f"deleted {name}" + (f" version {version}" if version else ""))
