"""A pipeline run on a cluster (issue 70 §1): the pipeline-run flow on the cpu pool, in a pod whose home goes with
it, runs the example pipeline (kfp.local's subprocess runner in the pod) on Kubernetes' own control plane
(`platform_nodes`: the real Prefect Kubernetes worker, the Job and its pod as the cluster makes them). The run's
folder is kept in its project's storage (values.projects_uri: the cluster's S3 here), so that `show`, `graph`
and `download`, asked where that pod never was, find each step's state and every output there, and deleting the
run removes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kube_cluster import final

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def test_a_pipeline_runs_folder_outlives_its_pod_in_the_projects_storage(platform_nodes, cluster_stores, tmp_path,
                                                                         monkeypatch):
    from prefect.deployments import run_deployment

    import mlyard.pipelines as pipelines
    from mlyard.core.specs.pipeline import PipelineRunSpec
    from mlyard.tasks.storage import Storage

    monkeypatch.setenv("MLYARD_PROJECTS_URI", cluster_stores.projects_uri)  # as the install's ConfigMap says
    monkeypatch.setenv("MLYARD_HOME", str(tmp_path / "elsewhere"))  # a machine where the run's pod never was,
    monkeypatch.setenv("MLYARD_PREFECT_API_URL", os.environ["PREFECT_API_URL"])  # reaching the cluster's Prefect
    assert pipelines.upload(EXAMPLES / "example.yaml", name="on-cluster")["status"] == "ACTIVE"
    spec = PipelineRunSpec(name="kept", pipeline="on-cluster", parameters={"epochs": 1, "rows": 40})
    run = run_deployment("pipeline-run/pipeline-run-kubernetes", parameters={"spec": spec.model_dump(mode="json")},
                         timeout=0)
    done = final(str(run.id), timeout=400)
    assert done.state.is_completed(), done.state

    view = pipelines.show_run(str(run.id))
    where = f"{cluster_stores.projects_uri}/default/pipeline-runs/{run.id}"
    assert view["status"] == "COMPLETE" and view["run_dir"] == where, view
    assert view["nodes"]["check"] == {"state": "SUCCEEDED", "runs": 2, "failed": 0}, view["nodes"]
    assert {("fit", "model"), ("make-data", "data"), ("publish", "card")} <= {(o["task"], o["name"]) for o in view["outputs"]}
    assert all(o["path"].startswith(f"{where}/outputs/") and o["bytes"] > 0 for o in view["outputs"]), view["outputs"]

    graph = pipelines.run_graph_view(str(run.id))
    assert next(n for n in graph["nodes"] if n["name"] == "explode")["state"] == "NOT STARTED"
    got = pipelines.download(str(run.id), tmp_path / "out", task="fit")
    assert json.loads((tmp_path / "out" / "fit" / "model").read_text()).keys() == {"a", "b"} and len(got["copied"]) == 1

    pipelines.delete_run(str(run.id))
    storage = Storage(pipelines.connect())
    assert not storage.exists(f"{where}/pipeline.yaml") and not storage.exists(view["outputs"][0]["path"])
