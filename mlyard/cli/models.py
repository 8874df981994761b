"""`mlyard models ...`: the model registry (MLflow): models, versions, aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, ask, emit, err, guard, out, parse_sets, typer_app
from mlyard.commands import act

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
    def go():
        uri = artifact_uri
        if uri is not None:
            from mlyard.core.settings import Settings
            from mlyard.core.uris import absolute

            uri = absolute(uri, Path.cwd())
            if Settings().api_key is not None:  # a member's folder: uploaded to their project first
                from mlyard.uploads import shipped

                uri = shipped("--artifact-uri", uri, Settings(), lambda line: err.print(line, markup=False,
                                                                                        highlight=False))
        return act("models_create", name=name, from_training=from_training, from_tuning=from_tuning,
                   artifact_uri=uri, framework=framework, framework_version=framework_version,
                   parameters={k: str(v) for k, v in parse_sets(params).items()}, description=description, alias=alias)

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


@app.command("download")
def models_download(ref: str = typer.Argument(..., help="name/version, name@alias or models:/name/version"),
                    to: Path = typer.Option(..., "--to", help="The folder the version's files are copied into (made "
                                            "when missing; a runtime variant's pod copies to /models)."),
                    as_json: bool = JSON) -> None:
    """Copy a registered version's files into a folder (MLflow's artifacts; what a runtime variant's engine
    reads on a cluster)."""
    from mlyard.core.connection import connect
    from mlyard.tasks.inference import fetch_model
    from mlyard.tasks.storage import Storage

    found = guard(lambda: ask("model_reference", model=ref))
    to.mkdir(parents=True, exist_ok=True)
    got = guard(lambda: fetch_model(Storage(connect()), found["uri"], to))
    files = sum(1 for p in Path(got).rglob("*") if p.is_file())
    if as_json:
        emit({"model": found["uri"], "path": str(got), "files": files}, True)
        return
    out.print(f"{found['uri']}: {files} files in {got}")


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


@app.command("compare")
def models_compare(refs: list[str] = typer.Argument(..., help="Two or more versions: name, name/version or name@alias."),
                   as_json: bool = JSON) -> None:
    """Versions side by side: a row per metric (and hyperparameter) of the runs that made them."""
    data = guard(lambda: ask("models_compare", refs=refs))
    if as_json:
        emit(data, True)
        return
    versions = data["versions"]
    columns = ["", *(v["model"] for v in versions)]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    rows = [{"": name, **{v["model"]: cell(v["metrics"].get(name)) for v in versions}} for name in data["metrics"]]
    params = sorted({k for v in versions for k in v["params"]})
    rows += [{"": f"param {k}", **{v["model"]: cell(v["params"].get(k)) for v in versions}} for k in params]
    rows.append({"": "aliases", **{v["model"]: ", ".join(v["aliases"]) for v in versions}})
    emit(rows, False, columns, title="versions compared", empty="no metrics")


@app.command("rename")
def models_rename(name: str, new_name: str) -> None:
    """Rename a model."""
    guard(lambda: act("models_rename", name=name, new_name=new_name))
    out.print(f"renamed {name} -> {new_name}")


@app.command("describe")
def models_describe(name: str, description: str, version: Optional[str] = typer.Option(None, help="Describe this version only.")) -> None:
    """Set the description of a model (or of one version)."""
    guard(lambda: act("models_describe", name=name, description=description, version=version))
    out.print("updated")


@app.command("alias")
def models_alias(name: str, alias: str, version: Optional[str] = typer.Argument(None, help="Version; omit with --delete."),
                 delete: bool = typer.Option(False, "--delete", help="Remove the alias.")) -> None:
    """Point an alias (e.g. champion) at a version, or remove it."""
    def go():
        act("models_alias", name=name, alias=alias, version=version, delete=delete)
        return f"removed alias {alias} of {name}" if delete else f"{name}@{alias} -> version {version}"

    out.print(guard(go))


@app.command("delete")
def models_delete(name: str, version: Optional[str] = typer.Option(None, help="Delete only this version.")) -> None:
    """Delete a model or a version; refused while an endpoint serves it."""
    guard(lambda: act("models_delete", name=name, version=version))
    out.print(f"deleted {name}" + (f" version {version}" if version else ""))
