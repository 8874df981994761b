"""A cluster's platform backed up and restored (`mlyard k8s backup --to URI`, `mlyard k8s restore --from URI`):
a Job in the platform's namespace (`job`: the migration Job's pod as the values render it, with the account
`mlyard-backup`), whose one container runs this module next to the databases and the storage it copies. The
backup is a prefix of object storage (`URI`):

    manifest.json        the release, the catalog's schema, when, and the inventory (each store's main tables
                         counted in the very snapshot its dump took); what was copied, and what was not and why
    databases/NAME.dump  pg_dump (custom format) of each database the install's Secrets name: the catalog, MLflow's,
                         Prefect's, and RAGs' vectors
    storage/NAME/...     each storage prefix copied object by object on the storage's side: the projects' files,
                         the uploads, MLflow's artifacts
    secrets.json         the Secrets mlyard made (registry accounts', notebooks' tokens: labelled managed-by
                         mlyard), whole. The install's own Secrets (their database passwords) are the admin's to
                         keep in their secret store: named in the manifest, not copied
    volumes.json         the namespace's volume claims (notebooks' data), named with their size and class: their
                         data is the storage system's to snapshot (a VolumeSnapshot), and a restore lists them

The storage prefix holds the Secrets and every database: it must be as private as they are. A restore needs the
platform stopped (`mlyard k8s restore` scales its Deployments to none first) and its databases existing (a
managed PostgreSQL's, or the dev overlay's): each dump is restored with `pg_restore --clean`, the storage's objects
copied back where they were (objects made since the backup stay), the Secrets made again; `mlyard k8s apply` then
starts it as it was, and the scheduler catches up from the backup's time. A database that is not PostgreSQL (an
SQLite file of a test) is named and skipped.

`python -m mlyard.tasks.cluster_backup {backup|restore} URI` is the Job's command: it prints what it does and,
last, the manifest as one JSON line.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlyard.core.errors import SpecError, StackError
from mlyard.core.names import RELEASE

NAME = "mlyard-backup"  # the Jobs' name prefix, label and account
OWNED = "app.kubernetes.io/managed-by=mlyard"  # the Secrets mlyard made


def job(values: Any, migrate: dict, action: str, uri: str) -> dict:
    """The Job that runs `action` (backup, restore) with `uri`: the migration Job's pod for the values (its image,
    security context, the Secrets' names), with the account that may read and make Secrets and list claims, and
    the settings Secret mounted (the storage's keys, the vector store)."""
    made = copy.deepcopy(migrate)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    labels = {"app.kubernetes.io/name": NAME, "mlyard.io/action": action}
    made["metadata"] = {"name": f"{NAME}-{action}-{stamp}", "namespace": values.namespace, "labels": labels}
    made["spec"].update(backoffLimit=0, ttlSecondsAfterFinished=86400)
    pod = made["spec"]["template"]["spec"]
    made["spec"]["template"]["metadata"] = {"labels": labels}
    pod.update(serviceAccountName=NAME, automountServiceAccountToken=True)
    box = pod["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in box["env"] if "valueFrom" in e}
    settings = refs["MLYARD_CATALOG_URL"]["name"]
    mlflow = refs["MLFLOW_BACKEND_STORE_URI"]["name"]
    for ref in refs.values():
        ref["optional"] = True  # a store the install does not have is named and skipped
    box.update(name=action, command=["python", "-m", "mlyard.tasks.cluster_backup", action, uri],
               resources={"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}})
    box["env"].append({"name": "MLYARD_BACKUP_ARTIFACTS", "valueFrom": {"secretKeyRef": {
        "name": mlflow, "key": "artifacts-destination", "optional": True}}})
    box["volumeMounts"].append({"name": "settings", "mountPath": "/var/run/secrets/mlyard", "readOnly": True})
    pod["volumes"].append({"name": "settings", "secret": {"secretName": settings, "defaultMode": 0o440}})
    pod["securityContext"]["fsGroup"] = pod["securityContext"]["runAsGroup"]
    return made


def run(values: Any, dyn: Any, action: str, uri: str, timeout: float, echo: Callable[[str], None]) -> dict[str, Any]:
    """`mlyard k8s backup` / `restore`: the Job made for the rendered install and waited for; its manifest. A
    restore first scales the platform's Deployments to none (as `mlyard k8s apply`'s manager: its next apply
    starts them again), so that nothing writes while the databases are put back."""
    from mlyard.tasks import cluster
    from mlyard.tasks.cluster_apply import apply, wait_for_job

    objs = cluster.render(values)
    migrate = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == "mlyard-migrate")
    if action == "restore":
        resource = dyn.resources.get(api_version="apps/v1", kind="Deployment")
        running = {d.metadata.name for d in dyn.get(resource, namespace=values.namespace).items}
        # the whole object as the install renders it, at no replicas: applied with less, the manager would let go
        # of (and so remove) every field it leaves out
        stopped = [copy.deepcopy(o) for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] in running]
        for body in stopped:
            body["spec"]["replicas"] = 0
            dyn.server_side_apply(resource, body=body, namespace=values.namespace, field_manager="mlyard",
                                  force_conflicts=True)
        echo(f"stopped the platform's {len(stopped)} Deployments (`mlyard k8s apply` starts them again)")
    made = job(values, migrate, action, uri)
    name = made["metadata"]["name"]
    list(apply([made], dyn))
    echo(f"Job {name} made; waiting for it (kubectl -n {values.namespace} logs -f job/{name})")
    ok, log = wait_for_job(dyn, values.namespace, name, timeout)
    lines = log.strip().splitlines()
    for line in lines[:-1]:
        echo(f"  {line}")
    if not ok or not lines or not lines[-1].startswith("{"):
        raise StackError(f"the {action} Job {name} failed: {lines[-1] if lines else 'no log'} (kubectl -n "
                         f"{values.namespace} logs job/{name})")
    return json.loads(lines[-1])


# -- in the Job ----------------------------------------------------------------------------------------------

def _databases(settings: Any) -> dict[str, str | None]:
    from mlyard.core.environment import backup_sources
    from mlyard.registry.migrate import sync_url

    sources = backup_sources()
    return {"catalog": settings.catalog_url, "mlflow": sources["mlflow"],  # Prefect's names asyncpg: read synchronously
            "prefect": sync_url(sources["prefect"]) if sources["prefect"] else None, "vectors": settings.vector_store_url}


def _prefixes(settings: Any) -> dict[str, str | None]:
    from mlyard.core.environment import backup_sources

    return {"projects": settings.projects_uri, "uploads": settings.upload_uri, "artifacts": backup_sources()["artifacts"]}


def _libpq(url: str) -> str | None:
    """`url` as pg_dump takes it, or None when it is not PostgreSQL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def backup(uri: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything the module names, into `uri`; the manifest."""
    from mlyard.core.settings import Settings
    from mlyard.tasks.dumps import count_tables, pg_client
    from mlyard.tasks.storage import Storage

    settings, t0 = Settings(), time.monotonic()
    storage = Storage(settings)
    _check(storage, uri, _prefixes(settings))
    manifest: dict[str, Any] = {"release": RELEASE, "taken_at": datetime.now(timezone.utc).isoformat(),
                                "databases": {}, "storage": {}, "skipped": {}, "inventory": {}}
    from sqlalchemy import create_engine, text

    with tempfile.TemporaryDirectory() as scratch:
        for name, url in _databases(settings).items():
            libpq = _libpq(url) if url else None
            if url is None or libpq is None:
                manifest["skipped"][name] = "not set" if not url else "not a PostgreSQL database: back it up with its engine"
                echo(f"database {name}: skipped ({manifest['skipped'][name]})")
                continue
            dump = Path(scratch) / f"{name}.dump"
            engine = create_engine(url, isolation_level="REPEATABLE READ")
            try:  # counted in the snapshot the dump takes: what a restore brings back
                with engine.connect() as conn:
                    snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar()
                    pg_client("pg_dump", ["--format=custom", "--no-owner", f"--file={dump}", f"--snapshot={snapshot}",
                                          f"--dbname={libpq}"])
                    manifest["inventory"][name] = count_tables(conn, name)
                    if name == "catalog":
                        manifest["catalog_schema"] = conn.execute(text(
                            "SELECT version_num FROM mlyard_alembic_version")).scalar()
            finally:
                engine.dispose()
            storage.upload(dump, f"{uri}/databases/{name}.dump")
            manifest["databases"][name] = dump.stat().st_size
            echo(f"database {name}: {dump.stat().st_size:,} bytes")
    for name, prefix in _prefixes(settings).items():
        if not prefix:
            manifest["skipped"][f"storage.{name}"] = "not set"
            continue
        manifest["storage"][name] = {"uri": prefix, "objects": _copy(storage, prefix, f"{uri}/storage/{name}")}
        echo(f"storage {name}: {manifest['storage'][name]['objects']} objects of {prefix}")
    secrets, others, volumes = _cluster_state(settings.kube_namespace)
    storage.write_bytes(f"{uri}/secrets.json", json.dumps(secrets).encode())
    storage.write_bytes(f"{uri}/volumes.json", json.dumps(volumes).encode())
    manifest.update(secrets=sorted(s["metadata"]["name"] for s in secrets), install_secrets=others, volumes=volumes,
                    seconds=round(time.monotonic() - t0, 1))
    echo(f"secrets: {len(secrets)} made by mlyard copied; the install's own ({', '.join(others) or 'none'}) are yours "
         f"to keep; volumes: {len(volumes)} listed")
    storage.write_bytes(f"{uri}/manifest.json", json.dumps(manifest).encode())  # last: a whole backup has one
    return manifest


def _check(storage: Any, uri: str, prefixes: dict[str, str | None]) -> None:
    """The backup's prefix: of object storage, and within none of the prefixes it copies."""
    if storage.resolve(uri, "uri").kind != "s3":
        raise SpecError("uri", uri, "an s3:// (or obs://) prefix of the platform's storage, as private as its Secrets")
    for name, prefix in prefixes.items():
        if prefix and f"{uri}/".startswith(f"{prefix.rstrip('/')}/"):
            raise SpecError("uri", uri, f"a prefix outside the {name} storage it copies ({prefix})")


def _copy(storage: Any, source: str, target: str) -> int:
    """Every object under `source` copied under `target`, on the storage's side where both are one object store's;
    through this pod where they are two (an s3:// backup of obs:// prefixes); how many."""
    src, dst = storage.resolve(source), storage.resolve(target)
    client, into, n = storage.client(src), storage.client(dst), 0
    prefix = f"{src.key.rstrip('/')}/" if src.key else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = f"{dst.key.rstrip('/')}/{obj['Key'][len(prefix):]}"
            if src.endpoint == dst.endpoint:  # boto3's managed copy: in parts there past copy_object's 5 GB
                client.copy({"Bucket": src.bucket, "Key": obj["Key"]}, dst.bucket, key)
            else:  # streamed in parts: never whole in memory or on disk
                into.upload_fileobj(client.get_object(Bucket=src.bucket, Key=obj["Key"])["Body"], dst.bucket, key)
            n += 1
    return n


def _cluster_state(namespace: str) -> tuple[list[dict], list[str], list[dict]]:
    """(the Secrets mlyard made, whole; the names of the others; the volume claims, named)."""
    from kubernetes import client, config

    config.load_incluster_config()
    core = client.CoreV1Api()
    owned = [{"metadata": {"name": s.metadata.name, "labels": s.metadata.labels or {}}, "type": s.type,
              "data": s.data or {}} for s in core.list_namespaced_secret(namespace, label_selector=OWNED).items]
    mine = {s["metadata"]["name"] for s in owned}
    others = sorted(s.metadata.name for s in core.list_namespaced_secret(namespace).items
                    if s.metadata.name not in mine and s.type != "kubernetes.io/service-account-token")
    volumes = [{"name": c.metadata.name, "labels": c.metadata.labels or {},
                "size": (c.spec.resources.requests or {}).get("storage"), "storage_class": c.spec.storage_class_name,
                "volume": c.spec.volume_name} for c in core.list_namespaced_persistent_volume_claim(namespace).items]
    return owned, others, volumes


def restore(uri: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The backup at `uri` put back (the platform stopped); its manifest, with the inventory restored."""
    from mlyard.core.settings import Settings
    from mlyard.tasks.dumps import count_tables, pg_client
    from mlyard.tasks.storage import Storage

    settings = Settings()
    storage = Storage(settings)
    _check(storage, uri, _prefixes(settings))
    try:
        manifest = json.loads(storage.read_bytes(f"{uri}/manifest.json"))
    except Exception as exc:  # noqa: BLE001 - missing, or not ours
        raise SpecError("uri", uri, f"a backup `mlyard k8s backup` made (its manifest.json: {exc})") from None
    from sqlalchemy import create_engine

    urls, restored = _databases(settings), {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in manifest["databases"]:
            libpq = _libpq(urls[name] or "")
            if libpq is None:
                raise StackError(f"the backup holds database {name}, and this install names no PostgreSQL for it")
            dump = Path(scratch) / f"{name}.dump"
            storage.fetch(f"{uri}/databases/{name}.dump", dump)  # streamed: a dump may be larger than the pod's memory
            pg_client("pg_restore", ["--clean", "--if-exists", "--no-owner", "--exit-on-error", f"--dbname={libpq}",
                                     f"--use-list={_without_extensions(dump)}", str(dump)])
            engine = create_engine(urls[name])  # type: ignore[arg-type]
            try:
                with engine.connect() as conn:
                    restored[name] = count_tables(conn, name)
            finally:
                engine.dispose()
            echo(f"database {name}: restored")
    for name, copied in manifest["storage"].items():
        n = _copy(storage, f"{uri}/storage/{name}", copied["uri"])
        echo(f"storage {name}: {n} objects back in {copied['uri']}")
    made = _make_secrets(settings.kube_namespace, json.loads(storage.read_bytes(f"{uri}/secrets.json")))
    echo(f"secrets: {len(made)} made again; volumes: restore the data of {len(manifest['volumes'])} claim(s) from "
         "their snapshots (volumes.json names them)")
    return {**manifest, "restored_inventory": restored, "restored_secrets": made}


def _without_extensions(dump: Path) -> Path:
    """The dump's table of contents less its extensions (pgvector, plpgsql): they are the database owner's, who made
    them with the database (a managed PostgreSQL's admin, the dev overlay's init), and a restore as the platform's
    user could neither drop nor make them."""
    import re
    import subprocess

    from mlyard.tasks.dumps import pg_binary

    listed = subprocess.run([str(pg_binary("pg_restore")), "--list", str(dump)], capture_output=True, text=True,
                            check=True, timeout=600).stdout
    kept = dump.with_suffix(".list")
    kept.write_text("".join(line + "\n" for line in listed.splitlines()
                            if not re.match(r"^\d+; \d+ \d+ (EXTENSION|COMMENT - EXTENSION) ", line)))
    return kept


def _make_secrets(namespace: str, secrets: list[dict]) -> list[str]:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_incluster_config()
    core, made = client.CoreV1Api(), []
    for s in secrets:
        body = {"apiVersion": "v1", "kind": "Secret", **s}
        try:
            core.create_namespaced_secret(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(s["metadata"]["name"], namespace, body)
        made.append(s["metadata"]["name"])
    return made


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlyard.tasks.cluster_backup", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("backup", "restore"))
    parser.add_argument("uri", help="The backup's prefix (s3://BUCKET/PATH).")
    args = parser.parse_args(argv)
    try:
        manifest = (backup if args.action == "backup" else restore)(args.uri.rstrip("/"),
                                                                   lambda line: print(line, flush=True))
    except (SpecError, StackError) as exc:
        print(f"{args.action} failed: {exc}", flush=True)
        return 1
    print(json.dumps(manifest), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
