"""Storage: stage data in and out of s3://, obs://, nas://, file:// and plain paths (DESIGN §4).

Plain functions on a `Storage` bound to settings; flows use them through the tasks at the bottom.
Writes are atomic: a local directory is written under a temporary name and renamed into place; an
object is only visible once its (multipart) upload completed, and a directory upload writes its
`_MLYARD_SUCCESS` marker last.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from mlyard.core.errors import StorageError, StorageNotFound, StorageUnreachable
from mlyard.core.settings import Settings
from mlyard.core.uris import Location, parse_uri

SUCCESS_MARKER = "_MLYARD_SUCCESS"
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


class Storage:
    def __init__(self, settings: Settings, s3_client_factory=None):
        self.settings = settings
        self._factory = s3_client_factory or self._make_client
        self._clients: dict[str | None, object] = {}

    # -- resolving -----------------------------------------------------------------------------

    def resolve(self, uri: str, field: str = "uri") -> Location:
        return parse_uri(uri, field, nas_mounts=self.settings.nas_mounts)

    def _make_client(self, endpoint: str | None):
        import boto3  # a fifth of a second: only for object storage, not for a flow that reads local files
        from botocore.config import Config

        s = self.settings
        url = s.s3_endpoint_url if endpoint is None else f"{s.obs_scheme}://{endpoint}"
        return boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=s.s3_access_key_id,
            aws_secret_access_key=s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None,
            region_name=s.s3_region,
            config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                          s3={"addressing_style": "path"}),
        )

    def client(self, loc: Location):
        if loc.endpoint not in self._clients:
            self._clients[loc.endpoint] = self._factory(loc.endpoint)
        return self._clients[loc.endpoint]

    # -- reading -------------------------------------------------------------------------------

    def list(self, uri: str, pattern: str = "**", field: str = "uri") -> list[str]:
        """Relative names of the files under `uri` that match the glob `pattern` (`**` crosses folders)."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            root = loc.path
            if root.is_file():
                names = [root.name]
            elif root.is_dir():
                names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            else:
                raise StorageNotFound(uri)
        else:
            names = sorted(self._s3_keys(loc, uri))
        return [n for n in names if glob_match(n, pattern) and n != SUCCESS_MARKER]

    def _s3_keys(self, loc: Location, uri: str) -> list[str]:
        client = self.client(loc)
        prefix = loc.key
        with _translated(uri):
            # An exact object key is a single file.
            if prefix and not prefix.endswith("/"):
                try:
                    client.head_object(Bucket=loc.bucket, Key=prefix)
                    return [prefix.rsplit("/", 1)[-1]]
                except ClientError as exc:
                    if _code(exc) not in _MISSING_CODES:
                        raise
            dir_prefix = f"{prefix.rstrip('/')}/" if prefix else ""
            keys = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=dir_prefix):
                keys += [obj["Key"][len(dir_prefix):] for obj in page.get("Contents", [])]
        if not keys:
            raise StorageNotFound(uri)
        return keys

    def entries(self, uri: str, field: str = "uri") -> list[tuple[str, int, str, str]]:
        """Every file under `uri` as (name relative to it, bytes, its own URI, stamp), in name order; one
        file when `uri` is a file. The stamp changes whenever the content may have: size and modification
        time of a local file (as rsync's quick check), the ETag of an object."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            root = loc.path
            if root.is_file():
                st = root.stat()
                return [(root.name, st.st_size, uri, f"{st.st_size}:{st.st_mtime_ns}")]
            if not root.is_dir():
                raise StorageNotFound(uri)
            out = []
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.name != SUCCESS_MARKER:
                    st = p.stat()
                    out.append((str(p.relative_to(root)), st.st_size, str(p), f"{st.st_size}:{st.st_mtime_ns}"))
            return out
        client = self.client(loc)
        with _translated(uri):
            if loc.key and not loc.key.endswith("/"):
                try:
                    head = client.head_object(Bucket=loc.bucket, Key=loc.key)
                    return [(loc.key.rsplit("/", 1)[-1], int(head["ContentLength"]), uri,
                             _stamp(head["ContentLength"], head.get("ETag")))]
                except ClientError as exc:
                    if _code(exc) not in _MISSING_CODES:
                        raise
            prefix = f"{loc.key.rstrip('/')}/" if loc.key else ""
            base = uri.rstrip("/")
            found = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if name and not name.endswith("/") and name != SUCCESS_MARKER:
                        found.append((name, int(obj["Size"]), f"{base}/{name}", _stamp(obj["Size"], obj.get("ETag"))))
        if not found:
            raise StorageNotFound(uri)
        return sorted(found)

    def check(self, uri: str, field: str = "uri") -> None:
        """Raise StorageNotFound / StorageUnreachable unless `uri` holds something."""
        self.list(uri, field=field)

    def stage_in(self, uri: str, scratch: Path, field: str = "uri") -> Path:
        """A local path with the content of `uri`: local locations are used in place, remote ones downloaded."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            if not loc.path.exists():
                raise StorageNotFound(uri)
            return loc.path.resolve()
        names = self._s3_keys(loc, uri)
        scratch.mkdir(parents=True, exist_ok=True)
        client = self.client(loc)
        single = bool(loc.key) and not loc.key.endswith("/") and names == [loc.key.rsplit("/", 1)[-1]]
        with _translated(uri):
            if single:
                target = scratch / names[0]
                client.download_file(loc.bucket, loc.key, str(target))
                return target
            base = f"{loc.key.rstrip('/')}/" if loc.key else ""
            for name in names:
                if name.endswith("/") or name == SUCCESS_MARKER:
                    continue
                target = scratch / name
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(loc.bucket, base + name, str(target))
        return scratch

    def fetch(self, uri: str, target: Path, field: str = "uri") -> None:
        """One file's content written to the local path `target`, streamed (a local file copied, an object
        downloaded in parts), never held whole in memory."""
        import shutil

        loc = self.resolve(uri, field)
        if loc.kind == "local":
            if not loc.path.is_file():
                raise StorageNotFound(uri)
            shutil.copyfile(loc.path, target)
            return
        with _translated(uri):
            self.client(loc).download_file(loc.bucket, loc.key, str(target))

    def exists(self, uri: str, field: str = "uri") -> bool:
        """Whether one file is stored at `uri`."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            return loc.path.is_file()
        with _translated(uri):
            try:
                self.client(loc).head_object(Bucket=loc.bucket, Key=loc.key)
                return True
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES:
                    return False
                raise

    def size(self, uri: str, field: str = "uri") -> int:
        """Bytes of the one file at `uri`."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            if not loc.path.is_file():
                raise StorageNotFound(uri)
            return loc.path.stat().st_size
        with _translated(uri):
            return int(self.client(loc).head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])

    def delete(self, uri: str, field: str = "uri") -> None:
        """Remove one file (nothing happens when it is not there)."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            loc.path.unlink(missing_ok=True)
            return
        with _translated(uri):
            self.client(loc).delete_object(Bucket=loc.bucket, Key=loc.key)

    def read_bytes(self, uri: str, field: str = "uri") -> bytes:
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            if not loc.path.is_file():
                raise StorageNotFound(uri)
            return loc.path.read_bytes()
        with _translated(uri):
            try:
                return self.client(loc).get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES:
                    raise StorageNotFound(uri) from exc
                raise

    # -- writing -------------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes, field: str = "uri") -> None:
        """Write one file atomically."""
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            loc.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=loc.path.parent, prefix=f".{loc.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, loc.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
        with _translated(uri):
            self.client(loc).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)

    def upload(self, src: Path, uri: str, field: str = "uri") -> str:
        """Copy the local file or directory `src` to `uri`, replacing what was there. Returns `uri`."""
        src = Path(src)
        if not src.exists():
            raise StorageNotFound(str(src))
        loc = self.resolve(uri, field)
        if loc.kind == "local":
            _atomic_copy_local(src, loc.path)
            return uri
        client = self.client(loc)
        with _translated(uri):
            if src.is_file():
                client.upload_file(str(src), loc.bucket, loc.key)
                return uri
            base = f"{loc.key.rstrip('/')}/" if loc.key else ""
            # A stale marker must not vouch for a directory that is being replaced.
            client.delete_object(Bucket=loc.bucket, Key=base + SUCCESS_MARKER)
            for path in sorted(p for p in src.rglob("*") if p.is_file()):
                client.upload_file(str(path), loc.bucket, base + str(path.relative_to(src)))
            client.put_object(Bucket=loc.bucket, Key=base + SUCCESS_MARKER, Body=b"")
        return uri


def _atomic_copy_local(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        if dest.exists() and dest.is_dir() and not dest.is_symlink():
            old = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()


def glob_match(name: str, pattern: str) -> bool:
    if pattern in ("**", "*", "**/*"):
        return True
    if fnmatch.fnmatchcase(name, pattern):
        return True
    # `**/x` also matches `x` at the top level.
    return pattern.startswith("**/") and fnmatch.fnmatchcase(name, pattern[3:])


def _stamp(size: int, etag: str | None) -> str:
    """An object's stamp: its size and ETag (a new upload of other bytes gets another ETag)."""
    tag = (etag or "").strip('"')  # S3 quotes it
    return f"{size}:{tag}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _translated:
    """Turn boto errors into StorageError subclasses naming the URI."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, StorageError):
            return False
        if isinstance(exc, ClientError):
            if _code(exc) in _MISSING_CODES:
                raise StorageNotFound(self.uri) from exc
            raise StorageUnreachable(self.uri, f"{_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}") from exc
        if isinstance(exc, (EndpointConnectionError, NoCredentialsError, BotoCoreError)):
            raise StorageUnreachable(self.uri, str(exc)) from exc
        return False
