"""Each project's own prefix of the platform's storage (Settings.projects_uri, `<home>/projects` on one
machine): `<root>/<project>/`. A project member's run reads and writes there alone, since the platform's
processes hold the platform's credentials (its home, its buckets): a member's spec that names anything
else (a path of the platform's machine, another project's prefix, another bucket) is refused before a
run is made (`confine`). A member's local folder reaches their prefix through the mlyard API
(`PUT /v1/uploads/{digest}/{name}`: a tar, unpacked with tarfile's `data` filter, `receive`), named by the
digest of what it holds, so the same folder is sent once.
"""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mlyard.core.errors import SpecError
from mlyard.core.uris import project_prefix, within

_DIGEST = re.compile(r"^[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def confine(spec: Any, project: str, settings: Any) -> Any:
    """Refuse a member's spec naming any location outside their project's prefix (SpecError, the field)."""
    from mlyard.uploads import map_locations

    area = project_prefix(settings, project)
    what = (f"a location under project {project}'s storage, {area}/ (the CLI and Python upload a local folder "
            "there for you); a member's run never reads or writes the platform's own files or buckets")

    def check(field: str, uri: str | None) -> str | None:
        if uri and not within(uri, area, field):
            raise SpecError(field, uri, what)
        return uri

    return map_locations(spec, check, check)  # type: ignore[arg-type]


def receive(body: Path, digest: str, name: str) -> dict[str, str]:
    """Unpack an uploaded tar (`body`) of the folder or file `name` into the caller's project prefix, as
    `uploads/<digest>/<name>`, unless it is there already: {"uri"}."""
    from mlyard.core.connection import connect
    from mlyard.tasks.storage import SUCCESS_MARKER, Storage
    from mlyard.teams import acting_editor

    if not _DIGEST.match(digest):
        raise SpecError("digest", digest, "16 hexadecimal digits (the upload's content digest)")
    if not _NAME.match(name) or name in (".", ".."):
        raise SpecError("name", name, "a file or folder name: letters, digits, '.', '_' and '-'")
    project = acting_editor("uploading")
    settings = connect()
    storage = Storage(settings)
    target = f"{project_prefix(settings, project)}/uploads/{digest}/{name}"
    if storage.exists(f"{target}/{SUCCESS_MARKER}", "upload") or storage.exists(target, "upload"):
        return {"uri": target}
    with tempfile.TemporaryDirectory(dir=upload_scratch(settings.home_dir), prefix=f"unpack.pid{os.getpid()}.") as tmp:
        try:
            with tarfile.open(body) as tar:
                members = tar.getmembers()
                if not members or any(m.name != name and not m.name.startswith(f"{name}/") for m in members):
                    raise SpecError("upload", name, f"a tar holding {name!r} alone (its files under {name}/)")
                tar.extractall(tmp, filter="data")  # no absolute paths, no `..`, no links out, no devices
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SpecError("upload", name, f"a readable tar ({type(exc).__name__}: {exc})") from None
        made = Path(tmp) / name
        if made.is_dir():
            (made / SUCCESS_MARKER).touch()  # a folder's upload is whole once its marker is there
        storage.upload(made, target, "upload")
    return {"uri": target}


def upload_scratch(home: Path) -> Path:
    """Where an upload's body and its unpacking wait: in the home (private), named after the process that
    receives them, so that what a killed one left is removed by the next upload."""
    from mlyard.flows.platform import sweep_scratch

    folder = home / "uploading"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)  # the home's, private as all of it, whoever made it first
    sweep_scratch(folder)
    return folder
