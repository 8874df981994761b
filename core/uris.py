"""Parse the storage locations a user can give (DESIGN §4). Pure: no I/O.

    s3://bucket/prefix                      S3 API at the configured endpoint
    obs://{endpoint}/{container}/{path}     S3 API at that endpoint
    nas://{nas-id}:/{path}                  a mounted share; settings map the id to its mount root
    file:///abs/path  or  a plain path      the local file system
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from mlyard.core.errors import SpecError

SCHEMES = ("s3", "obs", "nas", "file")
_NAS = re.compile(r"^nas://(?P<id>[A-Za-z0-9_.-]+):/(?P<path>.*)$")


@dataclass(frozen=True)
class Location:
    """A parsed storage URI: either an object-store prefix or a local path."""

    uri: str
    kind: Literal["s3", "local"]
    bucket: str = ""
    key: str = ""  # object key prefix, no leading slash
    endpoint: str | None = None  # obs:// endpoint host; None means the configured S3 endpoint
    path: Path | None = None  # local path (file://, plain, or nas:// resolved later)
    nas_id: str | None = None


def parse_uri(uri: str, field: str = "uri", nas_mounts: dict[str, Path] | None = None) -> Location:
    """Parse `uri`; raise SpecError naming `field` when it is not a location mlyard understands."""
    if not isinstance(uri, str) or not uri.strip():
        raise SpecError(field, uri, "give a path or a URI (s3://, obs://, nas://, file://)")
    uri = uri.strip()
    if uri.startswith("nas://"):
        m = _NAS.match(uri)
        if not m:
            raise SpecError(field, uri, "a NAS URI looks like nas://{nas-id}:/{path}")
        nas_id, rel = m["id"], m["path"]
        root = None
        if nas_mounts is not None:
            if nas_id not in nas_mounts:
                known = ", ".join(sorted(nas_mounts)) or "none"
                raise SpecError(
                    field, uri, f"NAS id {nas_id!r} has no mount root (known: {known}); "
                    "set MLYARD_NAS_MOUNTS, e.g. '{\"" + nas_id + "\": \"/mnt/" + nas_id + "\"}'"
                )
            root = Path(nas_mounts[nas_id])
        return Location(uri, "local", path=(root / rel) if root is not None else Path(rel), nas_id=nas_id)
    if "://" not in uri:
        return Location(uri, "local", path=Path(uri).expanduser())
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SpecError(field, uri, "a file URI has no host: file:///absolute/path")
        return Location(uri, "local", path=Path(unquote(parsed.path)))
    if scheme == "s3":
        if not parsed.netloc:
            raise SpecError(field, uri, "an S3 URI names its bucket: s3://bucket/prefix")
        return Location(uri, "s3", bucket=parsed.netloc, key=parsed.path.lstrip("/"))
    if scheme == "obs":
        parts = parsed.path.lstrip("/").split("/", 1)
        if not parsed.netloc or not parts[0]:
            raise SpecError(field, uri, "an object storage URI looks like obs://{endpoint}/{container}/{path}")
        return Location(uri, "s3", bucket=parts[0], key=parts[1] if len(parts) > 1 else "",
                        endpoint=parsed.netloc)
    raise SpecError(field, uri, f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)} or a plain path")


RELATIVE_PATHS = ("A relative path is taken from the current directory of the command or Python process that "
                  "submits the run (from the Prefect UI's Run: the mlyard project directory) and stored absolute.")


def absolute(uri: str, base: Path) -> str:
    """`uri` with a relative local path made absolute against `base`; URIs and absolute paths unchanged."""
    if not isinstance(uri, str) or "://" in uri or not uri.strip():
        return uri
    path = Path(uri.strip()).expanduser()
    return uri if path.is_absolute() else os.path.normpath(base / path)


def project_prefix(settings: Any, project: str) -> str:
    """A project's prefix of the platform's storage: `<projects_uri>/<project>` (`<home>/projects` unset)."""
    return f"{(settings.projects_uri or str(settings.home_dir / 'projects')).rstrip('/')}/{project}"


def within(uri: str, area: str, field: str = "uri") -> bool:
    """Whether `uri` names something under `area` (a local folder or an object-store prefix), links and
    `..` resolved: a path that leaves it through a link is not within."""
    loc, home = parse_uri(uri, field), parse_uri(area, field)
    if loc.kind != home.kind or loc.nas_id is not None:
        return False
    if loc.kind == "local":
        assert loc.path is not None and home.path is not None
        return os.path.realpath(loc.path).startswith(os.path.realpath(home.path) + os.sep)
    return (loc.bucket, loc.endpoint) == (home.bucket, home.endpoint) and \
        f"{loc.key.rstrip('/')}/".startswith(f"{home.key.rstrip('/')}/")
