"""Settings in a Kubernetes pod (issue 26): read from a mounted Secret's files as well as the environment,
and no silent fallback to SQLite inside the pod. Each case is a fresh process with a clean environment
(KUBERNETES_SERVICE_HOST is what the kubelet sets in every pod; no cluster is needed for the rule).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLYARD_HOME": str(tmp_path / "home"),
            "MLYARD_SECRETS_DIR": str(tmp_path / "no-secrets"), "DO_NOT_TRACK": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module", [["-m", "mlyard.tasks.scheduling", "--once"], ["-m", "mlyard.service", "--port", "1"],
                                    ["-m", "mlyard.serving.gateway_main", "--port", "1"]])
def test_a_pod_without_the_shared_stores_refuses_to_start(tmp_path, module):
    out = _run(module, tmp_path, KUBERNETES_SERVICE_HOST="10.96.0.1")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "MLYARD_MLFLOW_TRACKING_URI" in lines[0] and "MLYARD_CATALOG_URL" in lines[0]
    assert "Kubernetes pod" in lines[0] and "SQLite" in lines[0]
    assert not list(tmp_path.rglob("*.db")), "nothing was written to a local database"


def test_a_flow_in_a_pod_without_the_tracking_uri_fails_before_it_touches_a_store(tmp_path):
    code = "from mlyard.flows.platform import Platform; Platform()"
    out = _run(["-c", code], tmp_path, KUBERNETES_SERVICE_HOST="10.96.0.1",
               MLYARD_CATALOG_URL="postgresql+psycopg://mlyard@postgres/catalog")
    assert out.returncode != 0
    assert "LocalStoresInPod" in out.stderr and "MLYARD_MLFLOW_TRACKING_URI" in out.stderr
    assert "MLYARD_CATALOG_URL" not in out.stderr.splitlines()[-1]  # only what is missing is named
    assert not list(tmp_path.rglob("*.db"))


def test_settings_come_from_a_mounted_secret_as_files(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mlyard_catalog_url").write_text("postgresql+psycopg://mlyard@postgres/catalog")
    (secrets / "mlyard_s3_secret_access_key").write_text("s3cr3t")
    code = ("from mlyard.core.settings import Settings, require_shared_stores; s = Settings(); require_shared_stores(s); "
            "print(s.catalog_url, s.mlflow_tracking_uri, s.s3_secret_access_key.get_secret_value())")
    out = _run(["-c", code], tmp_path, KUBERNETES_SERVICE_HOST="10.96.0.1", MLYARD_SECRETS_DIR=str(secrets),
               MLYARD_MLFLOW_TRACKING_URI="http://mlflow:5000")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["postgresql+psycopg://mlyard@postgres/catalog", "http://mlflow:5000", "s3cr3t"]


def test_outside_a_pod_the_embedded_stores_are_the_default(tmp_path):
    code = "from mlyard.core.settings import Settings, require_shared_stores; s = Settings(); require_shared_stores(s); print(s.catalog_db_url)"
    out = _run(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"


def test_a_service_url_template_names_only_what_routing_fills_in():
    from pydantic import ValidationError

    from mlyard.core.settings import Settings

    assert Settings().kube_service_url == "http://{service}.{namespace}.svc.cluster.local:{port}"
    assert Settings(kube_service_url="http://{cluster_ip}:{port}").kube_service_url == "http://{cluster_ip}:{port}"
    for bad, words in (("http://{svc}:80", "may name only"), ("https://{service}:443", "http://")):
        with pytest.raises(ValidationError, match=words):
            Settings(kube_service_url=bad)
