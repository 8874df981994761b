"""The inputs of a run queued on a Kubernetes pool, as its pods can read them: a path on the submitting
machine (relative or absolute; a workstation's, or the pod's of a CLI that runs in the cluster) names
nothing in another pod, so it is uploaded to the platform's storage (Settings.upload_uri) and the spec
names the upload instead; without an upload prefix it is refused, as is an output path there, before any
run is made. Object-store URIs (s3://, obs://) and NAS URIs (mounted in the pods by the platform) pass.

An upload's place is the digest of what it holds (names, sizes and contents), so the same folder
submitted again is not sent again."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from mlyard.core.errors import SpecError
from mlyard.core.settings import Settings
from mlyard.core.specs import (
    BatchInferenceSpec,
    EvaluationSpec,
    TrainingSpec,
    TuningSpec,
    is_mlflow_uri,
    is_registry_ref,
)
from mlyard.core.specs.endpoint import SyncSpec
from mlyard.core.specs.pipeline import PipelineRunSpec
from mlyard.core.specs.rag import RagSpec
from mlyard.core.uris import parse_uri

Echo = Callable[[str], None]


def for_cluster(spec: Any, settings: Settings, echo: Echo = lambda line: None, area: str | None = None) -> Any:
    """`spec` with every local input uploaded and named by its upload (see the module). `area`: a member's
    project storage (mlyard/project_storage.py), whose locations are the platform's and pass as given."""
    shipper = _Shipper(settings, echo, area)
    return map_locations(spec, shipper.input, shipper.output)


def shipped(field: str, uri: str, settings: Settings, echo: Echo = lambda line: None) -> str:
    """One location as a run reads it (see the module): a local path uploaded (a member's, to their project)."""
    return _Shipper(settings, echo).input(field, uri)


def map_locations(spec: Any, inputs: Callable[[str, str], str], outputs: Callable[[str, str | None], None],
                  prefix: str = "") -> Any:
    """`spec` with each location it reads given as `inputs(field, uri)` returns it, after each location it
    writes was shown to `outputs(field, uri)`: the one list of a spec's locations (a source folder, datasets,
    checkpoints, input files, a model folder; outputs), for uploading them and for confining them."""
    if isinstance(spec, TuningSpec):  # a tuning of a template: the template's paths are the catalog's
        return spec if spec.training is None else spec.model_copy(
            update={"training": map_locations(spec.training, inputs, outputs, "training.")})
    if isinstance(spec, TrainingSpec):
        for field in ("output_uri", "checkpoint_output_uri"):
            outputs(prefix + field, getattr(spec, field))
        updates: dict[str, Any] = {f: inputs(prefix + f, getattr(spec, f))
                                   for f in ("source_uri", "checkpoint_input_uri") if getattr(spec, f)}
        updates["datasets"] = {k: inputs(f"{prefix}datasets.{k}", v) for k, v in spec.datasets.items()}
        return spec.model_copy(update=updates)
    if isinstance(spec, (BatchInferenceSpec, EvaluationSpec)):
        outputs("output_uri", spec.output_uri)
        updates = {"input_uri": inputs("input_uri", spec.input_uri)}
        if not (is_registry_ref(spec.model) or is_mlflow_uri(spec.model)):  # a model folder here
            updates["model"] = inputs("model", spec.model)
        return spec.model_copy(update=updates)
    if isinstance(spec, SyncSpec):  # the folder pushed to an endpoint; where its URL is written
        outputs("config", spec.config)
        return spec.model_copy(update={"source": inputs("source", spec.source)})
    if isinstance(spec, PipelineRunSpec) and spec.nas_uri:  # a share its steps read
        return spec.model_copy(update={"nas_uri": inputs("nas_uri", spec.nas_uri)})
    if isinstance(spec, RagSpec):  # its documents, and the folders of its embedding model and its LLM
        read = {"path": inputs("path", spec.path)}
        for field in ("embedding", "llm"):
            part = getattr(spec, field)
            if (folder := part.model_folder()) is not None:
                read[field] = part.model_copy(update={"model": inputs(f"{field}.model", folder)})
        return spec.model_copy(update=read)
    return spec


class _Shipper:
    def __init__(self, settings: Settings, echo: Echo, area: str | None = None):
        self.settings, self.echo, self.area = settings, echo, area
        self.member = settings.api_key is not None  # a project member: through the mlyard API, as them
        self._storage: Any = None

    def _in_area(self, field: str, uri: str | None) -> bool:
        from mlyard.core.uris import within

        return bool(uri and self.area and within(uri, self.area.rstrip("/"), field))

    def _to_project(self, field: str, uri: str, path: Path) -> str:
        from mlyard.warm_api import signed_in_api, signed_in_headers

        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        size = sum(f.stat().st_size for f in files)
        sent = send(signed_in_api(self.settings), path, _digest(path, files), signed_in_headers(self.settings))
        self.echo(f"{field}: {uri} ({len(files)} file(s), {size / 1e6:.1f} MB) is in your project at {sent}")
        return sent

    @staticmethod
    def _local(uri: str | None, field: str) -> Path | None:
        if not uri:
            return None
        loc = parse_uri(uri, field)
        return loc.path if loc.kind == "local" and loc.nas_id is None else None

    def output(self, field: str, uri: str | None) -> None:
        if self._local(uri, field) is not None and not self._in_area(field, uri):
            if self.area:
                raise SpecError(field, uri, f"a location under your project's storage, {self.area} (a member's run "
                                "writes there alone)")
            who = "a project member's run" if self.member else "a run on a Kubernetes pool"
            raise SpecError(field, uri, f"{who} cannot write to a path on this machine: give an s3:// or obs:// URI "
                            "of the platform's storage" + (" under your project's prefix (`mlyard projects show`)"
                                                           if self.member else ", or a nas:// URI its pods mount"))

    def input(self, field: str, uri: str) -> str:
        path = self._local(uri, field)
        if path is None or self._in_area(field, uri):
            return uri
        if self.member and not self.settings.upload_uri:  # through the platform's API, into the project's prefix
            if not path.exists():
                raise SpecError(field, uri, "a path that exists on this machine (it is uploaded to your project)")
            return self._to_project(field, uri, path)
        if not self.settings.upload_uri:
            raise SpecError(field, uri, "a path on this machine, which a run on a Kubernetes pool cannot read: give "
                            "an s3:// or obs:// URI (or nas://), or set MLYARD_UPLOAD_URI=s3://BUCKET/PREFIX so "
                            "mlyard uploads it there")
        if not path.exists():
            raise SpecError(field, uri, "a path that exists on this machine (it is uploaded for the cluster's pods)")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        digest = _digest(path, files)
        target = f"{self.settings.upload_uri.rstrip('/')}/{digest}/{path.name}"
        storage = self.storage()
        from mlyard.tasks.storage import SUCCESS_MARKER  # a folder's upload is whole once its marker is there

        if storage.exists(f"{target}/{SUCCESS_MARKER}" if path.is_dir() else target, field):
            self.echo(f"{field}: {uri} is at {target} already")
        else:
            size = sum(f.stat().st_size for f in files)
            self.echo(f"{field}: uploading {uri} ({len(files)} file(s), {size / 1e6:.1f} MB) to {target} ...")
            storage.upload(path, target, field)
        return target

    def storage(self) -> Any:
        if self._storage is None:
            from mlyard.tasks.storage import Storage

            self._storage = Storage(self.settings)
        return self._storage


def _digest(root: Path, files: list[Path]) -> str:
    """What the files hold, names and sizes included: 16 hex digits of a SHA-256."""
    h = hashlib.sha256()
    for f in files:
        name = f.relative_to(root).as_posix() if f != root else f.name
        h.update(f"{name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def send(url: str, path: Path, digest: str, headers: dict[str, str]) -> str:
    """Upload the local file or folder `path` to the caller's project prefix through the mlyard API at
    `url` (PUT /v1/uploads, mlyard/project_storage.py): the URI it is at."""
    import json
    import tarfile
    import tempfile
    import urllib.error
    import urllib.request

    from mlyard.warm_api import as_error

    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w:gz") as tar:
            tar.add(path, arcname=path.name)
        size = tmp.tell()
        tmp.seek(0)
        req = urllib.request.Request(f"{url}/v1/uploads/{digest}/{path.name}", data=tmp, method="PUT",
                                     headers={**headers, "Content-Type": "application/x-tar",
                                              "Content-Length": str(size)})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.loads(resp.read())["uri"]
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                raise SpecError("upload", str(path), f"the mlyard API answered {exc.code}") from None
            raise as_error(problem) from None
