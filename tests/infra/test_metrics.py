"""Every service's metrics are scrapeable with a credential (Prometheus text), and the monitoring component
(infra/k8s/components/monitoring) scrapes each with the credential it asks for: the ServiceMonitors are
checked against the services and Secrets the overlays render and the README names, and those credentials
are tried on the running stack's gateway, mlyard API and Prefect server, and on a real `mlflow server`
started as the mlflow Deployment starts it (refused without them)."""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import httpx

from tests.infra.test_k8s_manifests import K8S, _by, render

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
        # the scrape credential alone: never the internal one, nor Prefect's
        assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "mlyard-metrics", "key": "token"}}
        assert "basicAuth" not in endpoint and _secret_keys("mlyard-metrics") >= {"token"}
    # the Prefect server through the API's relay, its series labelled as its own
    prefect = monitors["prefect-server"]
    assert prefect["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "mlyard-api"}
    assert prefect["spec"]["endpoints"][0]["path"] == "/metrics/prefect"
    assert prefect["spec"]["endpoints"][0]["relabelings"] == [{"action": "replace", "targetLabel": "job",
                                                               "replacement": "prefect-server"}]
    env = deployments["prefect-server"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PREFECT_SERVER_METRICS_ENABLED", "value": "true"} in env
    # Prometheus's namespace reaches exactly the guarded services' ports it scrapes, besides the base policies;
    # never the Prefect server's
    policies = _by(objs, "NetworkPolicy")
    assert "prefect-server-metrics" not in policies
    for service in ("mlyard-api", "mlflow"):
        rule = policies[f"{service}-metrics"]["spec"]["ingress"][0]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        pod = deployments[service]["spec"]["template"]["spec"]["containers"][0]
        served = [p["containerPort"] for p in pod["ports"] if p["name"] != "door"]  # the Prefect UI's door: no metrics
        assert [p["port"] for p in rule["ports"]] == served
        assert policies[service]["spec"]["ingress"][0]["from"] == [{"podSelector": {}}], "the base policy as it was"
    dashboards = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-dashboard"]
    assert dashboards and dashboards[0]["metadata"]["labels"] == {"grafana_dashboard": "1"}


def test_each_service_answers_its_metrics_to_the_credential_alone(stack):
    """What the ServiceMonitors send, tried on the running services: the scrape credential (derived from the
    internal one) reads the gateway's, the API's and, relayed by the API, the Prefect server's metrics, and
    nothing else; the internal credential reads them too; Prefect's own basic auth still reads its server's."""
    from mlyard.core.environment import metrics_token

    assert stack.internal_token and stack.prefect_auth_string
    bearer = {"Authorization": f"Bearer {stack.internal_token}"}
    scrape = {"Authorization": f"Bearer {metrics_token(stack.internal_token)}"}
    basic = {"Authorization": "Basic " + base64.b64encode(stack.prefect_auth_string.encode()).decode()}
    scrapes = {f"{stack.gateway_url}/mlyard/metrics": (scrape, "mlyard_gateway_in_flight"),
               f"{stack.service_url}/metrics": (scrape, "mlyard_api_requests_total"),
               f"{stack.service_url}/metrics/prefect": (scrape, "process_cpu_seconds_total"),
               f"{stack.api_url}/metrics": (basic, "process_cpu_seconds_total")}
    for url, (credential, metric) in scrapes.items():
        assert httpx.get(url, timeout=30).status_code == 401, url
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401, url
        answer = httpx.get(url, headers=credential, timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain"), url
        assert re.search(rf"^{metric}[{{ ]", answer.text, re.M), (url, answer.text[:500])
        if credential is scrape:
            assert httpx.get(url, headers=bearer, timeout=30).status_code == 200, url  # the internal one reads them too
    # every answer of the gateway counted by class, one that routed nowhere too (what the 5xx and 503 rules rate)
    def answered(status: str) -> float:
        text = httpx.get(f"{stack.gateway_url}/mlyard/metrics", headers=scrape, timeout=30).text
        found = re.search(rf'^mlyard_gateway_answers_total\{{status="{status}"\}} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0

    before = answered("4xx")
    assert httpx.get(f"{stack.gateway_url}/no-such-endpoint/m/v2/models/m", timeout=30).status_code == 404
    assert answered("4xx") == before + 1
    # a run due on a pool no worker serves here (the gpu pool): counted, its wait growing
    from prefect.deployments import run_deployment

    waiting = run_deployment("train/train-gpu", parameters={"spec": {"name": "waits", "source_uri": "/nonexistent",
                                                                     "entry_point": "train.py"}}, timeout=0)
    try:
        time.sleep(2)
        api = httpx.get(f"{stack.service_url}/metrics", headers=scrape, timeout=30).text
        assert re.search(r'^mlyard_runs_waiting\{pool="gpu",state="SCHEDULED"\} [1-9]', api, re.M), api[-3000:]
        age = re.search(r'^mlyard_runs_oldest_waiting_seconds\{pool="gpu"\} (\S+)$', api, re.M)
        assert age and float(age[1]) >= 1, api[-3000:]
        assert re.search(r'^mlyard_runs_waiting\{pool="local",state="PENDING"\} ', api, re.M)
    finally:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(waiting.id, Cancelled(), force=True)
    # the scrape credential reads metrics and nothing else
    for method, url in (("GET", f"{stack.gateway_url}/mlyard/routes"), ("GET", f"{stack.gateway_url}/mlyard/stats"),
                        ("POST", f"{stack.service_url}/v1/queries/trainings_list"),
                        ("GET", f"{stack.service_url}/dashboard"), ("GET", f"{stack.api_url}/metrics")):
        assert httpx.request(method, url, headers=scrape, json={} if method == "POST" else None,
                             timeout=30).status_code == 401, url
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
        from mlyard.core.environment import metrics_token

        scrape = {"Authorization": f"Bearer {metrics_token(token)}"}
        assert httpx.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "by-scrape"}, headers=scrape,
                          timeout=30).status_code == 401  # the scrape credential tracks nothing
        for bearer in [{"Authorization": f"Bearer {token}"}, scrape] * 2:  # whichever worker answers
            text = httpx.get(f"{url}/metrics", headers=bearer, timeout=30).text
            created = re.search(r'^mlyard_mlflow_requests_total\{route="/api/2.0/mlflow/experiments/create",'
                                r'status="200"\} (\S+)$', text, re.M)
            assert created and float(created[1]) == 8, text[:3000]
            assert f"made-up-{os.getpid()}" not in text and 'route="other"' in text
    finally:
        from mlyard.tasks.processes import stop_group

        stop_group(server, 5)
