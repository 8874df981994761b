"""Every service's metrics are scrapeable with a credential (Prometheus text), and the monitoring component
(infra/k8s/components/monitoring) scrapes each with the credential it asks for: the ServiceMonitors are
checked against the services and Secrets the overlays render and the README names, and those credentials
are tried on the running stack's gateway, mlyard API and Prefect server, and on a real `mlflow server`
started as the mlflow Deployment starts it (refused without them)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import httpx

from tests.infra.test_k8s_manifests import K8S, SECRETS, _by, render

README = (K8S.parent / "README.md").read_text()


def _with_monitoring(tmp_path: Path) -> list[dict]:
    """The prod overlay with the component, as a platform team's own overlay adds it."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731 - kustomize takes relative roots only
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: mlyard\n"
        f"resources: [{rel(K8S / 'overlays' / 'prod')}]\ncomponents: [{rel(K8S / 'components' / 'monitoring')}]\n")
    return render(tmp_path)


def _secret_keys(secret: str) -> set[str]:
    """The keys infra/README.md's Secrets table gives `secret`."""
    row = next(line for line in README.splitlines() if line.startswith(f"| `{secret}` |"))
    return set(re.findall(r"`([a-z_-]+)`", row.split("|")[2]))


def test_the_monitoring_component_names_a_service_port_and_credential_that_exist(tmp_path):
    objs = _with_monitoring(tmp_path)
    services, deployments = _by(objs, "Service"), _by(objs, "Deployment")
    monitors = _by(objs, "ServiceMonitor")
    assert set(monitors) == {"gateway", "mlyard-api", "prefect-server", "mlflow"}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == "mlyard"
        service = next(s for s in services.values() if s["metadata"]["labels"] == {
            **monitor["spec"]["selector"]["matchLabels"], "app.kubernetes.io/part-of": "mlyard"})
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, name
        refs = [endpoint["authorization"]["credentials"]] if "authorization" in endpoint else \
            [endpoint["basicAuth"]["username"], endpoint["basicAuth"]["password"]]
        assert refs, f"{name} is scraped with a credential"
        for ref in refs:
            assert ref["name"] in SECRETS and ref["key"] in _secret_keys(ref["name"]), (name, ref)
    prefect = deployments["prefect-server"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PREFECT_SERVER_METRICS_ENABLED", "value": "true"} in prefect
    # Prometheus's namespace reaches exactly the guarded services' ports, besides the base policies
    policies = _by(objs, "NetworkPolicy")
    for service in ("prefect-server", "mlyard-api", "mlflow"):
        rule = policies[f"{service}-metrics"]["spec"]["ingress"][0]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        pod = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        served = [p["containerPort"] for p in pod["ports"] if p["name"] != "door"]  # the Prefect UI's door: no metrics
        assert [p["port"] for p in rule["ports"]] == served
        assert policies[service]["spec"]["ingress"][0]["from"] == [{"podSelector": {}}], "the base policy as it was"


def test_each_service_answers_its_metrics_to_the_credential_alone(stack):
    """What the ServiceMonitors send, tried on the running services: the gateway's and the API's bearer
    (the internal credential), Prefect's basic auth (the halves of its auth string)."""
    assert stack.internal_token and stack.prefect_auth_string
    bearer = {"Authorization": f"Bearer {stack.internal_token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(stack.prefect_auth_string.encode()).decode()}
    scrapes = {f"{stack.gateway_url}/mlyard/metrics": (bearer, "mlyard_gateway_in_flight"),
               f"{stack.service_url}/metrics": (bearer, "mlyard_api_requests_total"),
               f"{stack.api_url}/metrics": (basic, "process_cpu_seconds_total")}
    for url, (credential, metric) in scrapes.items():
        assert httpx.get(url, timeout=30).status_code == 401, url
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401, url
        answer = httpx.get(url, headers=credential, timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain"), url
        assert re.search(rf"^{metric}[{{ ]", answer.text, re.M), (url, answer.text[:500])
    # the API counts by route template, never by a caller's made-up path
    httpx.post(f"{stack.service_url}/v1/queries/no-such-{os.getpid()}", headers=bearer, json={}, timeout=30)
    text = httpx.get(f"{stack.service_url}/metrics", headers=bearer, timeout=30).text
    assert 'route="/v1/queries/{name}",status="400"' in text and f"no-such-{os.getpid()}" not in text


def test_mlflows_server_as_the_deployment_starts_it_counts_every_worker_for_the_credential_alone(tmp_path):
    """The mlflow Deployment's command and environment (as kubelet resolves them, with its Secrets), its
    host and port made this test's: two workers, a scrape of either sees the requests of both. Anything in
    the namespace without the tracking credential (a model's server, a notebook's kernel) is refused
    (tests/infra/test_mlflow_hosts.py); the platform's processes send it."""
    from tests.infra.test_mlflow_hosts import shipped_mlflow

    token = "internal-" + os.urandom(8).hex()
    url, server = shipped_mlflow(tmp_path, token)
    try:
        from mlyard.core.environment import tracking_token

        tracking = {"Authorization": f"Bearer {tracking_token(token)}"}
        for n in range(8):  # spread over both workers by the kernel; the count is theirs together
            answer = httpx.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": f"e{n}"}, headers=tracking,
                                timeout=30)
            assert answer.status_code == 200, answer.text
        httpx.get(f"{url}/api/2.0/mlflow/made-up-{os.getpid()}", headers=tracking, timeout=30)
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        for _ in range(4):  # whichever worker answers
            text = httpx.get(f"{url}/metrics", headers=bearer, timeout=30).text
            created = re.search(r'^mlyard_mlflow_requests_total\{route="/api/2.0/mlflow/experiments/create",'
                                r'status="200"\} (\S+)$', text, re.M)
            assert created and float(created[1]) == 8, text[:3000]
            assert f"made-up-{os.getpid()}" not in text and 'route="other"' in text
    finally:
        from mlyard.tasks.processes import stop_group

        stop_group(server, 5)
