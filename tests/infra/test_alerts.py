"""The monitoring component's alert rules and dashboard (infra/k8s/components/monitoring), as `mlyard k8s render`
writes them for a values file, read and run by Prometheus's own promtool (built by tests/controlplane/build.sh):
`check rules` reads every rule and every dashboard query as Prometheus would, and `test rules` fires each alert
on series made for it, with its labels and what it says, and keeps each one silent on a healthy platform. Every
metric they name is one the platform's services export, or one of the cluster's own exporters the component's
README names (kube-state-metrics, the kubelet, Kueue, Prometheus's `up`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mlyard.core.specs.cluster import ClusterValues
from mlyard.tasks.cluster import render

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / ".venv" / "controlplane" / "promtool"
NS = "ml-platform"
# what the cluster's exporters give (the rules' other inputs), and what mlyard's services export
EXTERNAL = {"up", "kube_job_status_failed", "kueue_pending_workloads", "kubelet_volume_stats_available_bytes",
            "kubelet_volume_stats_capacity_bytes"}
OURS = {"mlyard_gateway_requests_total", "mlyard_gateway_request_failures_total", "mlyard_gateway_answers_total",
        "mlyard_gateway_request_duration_seconds_bucket", "mlyard_gateway_in_flight", "mlyard_gateway_tokens_total",
        "mlyard_runs_waiting", "mlyard_runs_oldest_waiting_seconds", "mlyard_api_requests_total",
        "mlyard_api_request_seconds_bucket", "mlyard_mlflow_requests_total"}
FUNCTIONS = {"sum", "max", "rate", "absent", "histogram_quantile", "by", "or", "and", "label_values"}


@pytest.fixture(scope="module")
def rendered():
    assert PROMTOOL.is_file(), "make test builds promtool (tests/controlplane/build.sh)"
    values = ClusterValues(overlay="prod", namespace=NS, monitoring={"enabled": True, "waiting_minutes": 45,
                                                                     "volume_free_percent": 15})
    objs = render(values)
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    (board,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-dashboard"]
    return rule, json.loads(board["data"]["mlyard.json"])


def _promtool(*args: str, cwd: Path) -> str:
    out = subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _rules(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def _metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\))", expr)) - FUNCTIONS
    return {n for n in names if not re.search(rf"\b(by|without)\s*\([^)]*\b{n}\b", expr)}


def test_the_rules_are_written_for_the_values_and_read_by_prometheus(rendered, tmp_path):
    rule, _ = rendered
    assert rule["metadata"]["namespace"] == NS
    rules = _rules(rule)
    assert set(rules) == {"MlyardPrefectServerDown", "MlyardServiceDown", "MlyardRunsWaitingTooLong",
                          "MlyardGatewayErrors", "MlyardGatewayUnavailable", "MlyardEndpointFailing",
                          "MlyardMigrationFailed", "MlyardKueueWorkloadsPending", "MlyardVolumeFilling"}
    for name, r in rules.items():
        assert 'namespace="mlyard"' not in r["expr"] and "-n mlyard " not in json.dumps(r["annotations"]), name
        assert _metrics(r["expr"]) <= OURS | EXTERNAL, (name, _metrics(r["expr"]) - OURS - EXTERNAL)
        assert r["labels"]["severity"] in ("critical", "warning", "info") and r["annotations"]["summary"], name
    assert rules["MlyardRunsWaitingTooLong"]["expr"].endswith("> 2700")  # 45 minutes
    assert rules["MlyardVolumeFilling"]["expr"].endswith("< 0.15")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", "rules.yaml", cwd=tmp_path)


def _said(r: dict, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus fills them in for an alert of `labels`."""
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], v) for k, v in r["annotations"].items()}


# alert -> (input series that make it fire, the labels it fires with, besides the rule's own)
FIRING = {
    "MlyardPrefectServerDown": ([(f'up{{namespace="{NS}", job="prefect-server"}}', "1 0x20")],
                                {"namespace": NS, "job": "prefect-server"}),
    "MlyardServiceDown": ([(f'up{{namespace="{NS}", job="gateway", pod="a"}}', "1 0x20"),
                           (f'up{{namespace="{NS}", job="gateway", pod="b"}}', "0x21")], {"job": "gateway"}),
    "MlyardRunsWaitingTooLong": ([(f'mlyard_runs_oldest_waiting_seconds{{namespace="{NS}", pool="gpu"}}',
                                   "2000+60x20")], {"pool": "gpu"}),
    "MlyardGatewayErrors": ([(f'mlyard_gateway_answers_total{{namespace="{NS}", status="2xx"}}', "0+60x20"),
                             (f'mlyard_gateway_answers_total{{namespace="{NS}", status="5xx"}}', "0+10x20")], {}),
    "MlyardGatewayUnavailable": ([(f'mlyard_gateway_answers_total{{namespace="{NS}", status="2xx"}}', "0+60x20"),
                                  (f'mlyard_gateway_answers_total{{namespace="{NS}", status="503"}}', "0+10x20")],
                                 {}),
    "MlyardEndpointFailing": ([(f'mlyard_gateway_requests_total{{namespace="{NS}", endpoint="digits", stage="v2", '
                                f'model="m"}}', "0+60x20"),
                               (f'mlyard_gateway_request_failures_total{{namespace="{NS}", endpoint="digits", '
                                f'stage="v2", model="m"}}', "0+12x20")], {"endpoint": "digits", "stage": "v2"}),
    "MlyardMigrationFailed": ([(f'kube_job_status_failed{{namespace="{NS}", job_name="mlyard-migrate"}}', "0 1x20")],
                              {"namespace": NS, "job_name": "mlyard-migrate"}),
    "MlyardKueueWorkloadsPending": ([('kueue_pending_workloads{cluster_queue="mlyard-gpu", status="active"}',
                                      "3x80")], {"cluster_queue": "mlyard-gpu"}),
    "MlyardVolumeFilling": ([(f'kubelet_volume_stats_available_bytes{{namespace="{NS}", '
                              f'persistentvolumeclaim="data-lab-0"}}', "10x30"),
                             (f'kubelet_volume_stats_capacity_bytes{{namespace="{NS}", '
                              f'persistentvolumeclaim="data-lab-0"}}', "100x30")],
                            {"namespace": NS, "persistentvolumeclaim": "data-lab-0"}),
}
# a healthy platform: every input of every rule present and fine
HEALTHY = [(f'up{{namespace="{NS}", job="{job}"}}', "1x80") for job in ("prefect-server", "gateway", "mlyard-api",
                                                                       "mlflow")] + [
    (f'mlyard_runs_oldest_waiting_seconds{{namespace="{NS}", pool="gpu"}}', "30x80"),
    (f'mlyard_gateway_answers_total{{namespace="{NS}", status="2xx"}}', "0+60x80"),
    (f'mlyard_gateway_answers_total{{namespace="{NS}", status="5xx"}}', "0+1x80"),
    (f'mlyard_gateway_answers_total{{namespace="{NS}", status="503"}}', "0+1x80"),
    (f'mlyard_gateway_requests_total{{namespace="{NS}", endpoint="digits", stage="v2", model="m"}}', "0+60x80"),
    (f'mlyard_gateway_request_failures_total{{namespace="{NS}", endpoint="digits", stage="v2", model="m"}}', "0+1x80"),
    (f'kube_job_status_failed{{namespace="{NS}", job_name="mlyard-migrate"}}', "0x80"),
    ('kueue_pending_workloads{cluster_queue="mlyard-gpu", status="active"}', "0x80"),
    (f'kubelet_volume_stats_available_bytes{{namespace="{NS}", persistentvolumeclaim="data-lab-0"}}', "60x80"),
    (f'kubelet_volume_stats_capacity_bytes{{namespace="{NS}", persistentvolumeclaim="data-lab-0"}}', "100x80")]


def test_each_alert_fires_on_its_condition_saying_what_it_names_and_none_on_a_healthy_platform(rendered, tmp_path):
    rule, _ = rendered
    rules = _rules(rule)
    assert set(FIRING) == set(rules), "a rule without a firing case here"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = []
    for name, (series, labels) in FIRING.items():
        r = rules[name]
        expected = {**labels, **r["labels"]}
        at = "75m" if name == "MlyardKueueWorkloadsPending" else "20m"  # it waits an hour
        tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
                      "alert_rule_test": [{"eval_time": at, "alertname": name,
                                           "exp_alerts": [{"exp_labels": expected,
                                                           "exp_annotations": _said(r, expected)}]}]})
    tests.append({"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in HEALTHY],
                  "alert_rule_test": [{"eval_time": "75m", "alertname": name, "exp_alerts": []} for name in rules]})
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}))
    assert "SUCCESS" in _promtool("test", "rules", "tests.yaml", cwd=tmp_path)


def test_the_dashboards_queries_are_read_by_prometheus_and_name_what_the_platform_exports(rendered, tmp_path):
    _, board = rendered
    assert board["uid"] == "mlyard-platform" and board["templating"]["list"][0]["type"] == "datasource"
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10 and all("$namespace" in e for e in exprs), exprs
    for e in exprs:
        assert _metrics(e) <= OURS | {"up"}, (e, _metrics(e) - OURS)
    records = [{"record": f"mlyard:panel_{i}", "expr": e.replace("$namespace", NS)} for i, e in enumerate(exprs)]
    (tmp_path / "board.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    assert f"SUCCESS: {len(records)} rules found" in _promtool("check", "rules", "board.yaml", cwd=tmp_path)
    # the panels do not overlap
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(set(cells)) == len(cells)
