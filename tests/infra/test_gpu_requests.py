"""A GPU request the cluster cannot hold is refused before a run is made (issue 26, bad input): `mlyard
train --submit --pool gpu` in a fresh process as a user runs it (PATH, HOME, LANG and the user's
KUBECONFIG), against Kubernetes' own API server holding two GPU nodes and a CPU node (registered with
the capacity a node's kubelet reports, tainted so that nothing is scheduled to them; gone after the module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory, control_plane):
    from kubelet_node import ClusterApi

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    names = []
    for name, product, gpus in (("gpu-a100-1", "NVIDIA-A100-SXM4-80GB", "8"), ("gpu-t4-1", "Tesla-T4", "1"),
                                ("cpu-1", None, None)):
        labels = {"nvidia.com/gpu.product": product} if product else {}
        taints = [{"key": "mlyard.test/no-kubelet", "effect": "NoSchedule"}]
        node = api.create("Node", "v1", None, {"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
        names.append(node["metadata"]["name"])
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110", **({"nvidia.com/gpu": gpus} if gpus else {})}
        api.set_status("Node", "", name, {"capacity": resources, "allocatable": resources}, "admin")
    try:
        yield control_plane.kubeconfig(path=tmp_path_factory.mktemp("kube") / "config")
    finally:
        for name in names:
            api.delete(("Node", None, name))


def submit(stack, kubeconfig: Path, tmp_path: Path, resources: dict, **extra_env: str) -> subprocess.CompletedProcess:
    src = tmp_path / "algo"
    src.mkdir(exist_ok=True)
    (src / "main.py").write_text("print('ok')\n")
    spec = tmp_path / "train.yaml"
    spec.write_text(yaml.safe_dump({"name": "big", "source_uri": str(src), "entry_point": "main.py",
                                    "resources": resources}))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "KUBECONFIG": str(kubeconfig),
           **extra_env}
    user_dir = Path(os.environ["MLYARD_HOME"]).parent  # the running test platform's project directory
    return subprocess.run([str(BIN / "mlyard"), "train", "-f", str(spec), "--submit", "--pool", "gpu", "--json"],
                          cwd=user_dir, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("resources", "words"), [
    ({"gpu_count": 9}, ["resources.gpu_count", "at most 8"]),
    ({"gpu_count": 2, "gpu_type": "Tesla-T4"}, ["resources.gpu_count", "at most 1", "Tesla-T4"]),
    ({"gpu_count": 1, "gpu_type": "NVIDIA-H100"}, ["resources.gpu_type", "NVIDIA-A100-SXM4-80GB, Tesla-T4"]),
])
def test_the_rules_against_the_nodes_the_api_reports(kubeconfig, resources, words):
    from mlyard.core.errors import SpecError
    from mlyard.tasks import cluster

    capacity = cluster.gpu_capacity(cluster.dynamic_client(str(kubeconfig)))
    assert capacity == {"NVIDIA-A100-SXM4-80GB": 8, "Tesla-T4": 1}
    with pytest.raises(SpecError) as refused:
        cluster.check_gpus("resources", resources["gpu_count"], resources.get("gpu_type"), capacity)
    for word in words:
        assert word in str(refused.value)


def test_the_kubernetes_discovery_cache_is_kept_private_in_mlyard_s_cache(kubeconfig, tmp_path, monkeypatch):
    """The kubernetes client caches what an API server serves; mlyard keeps that file in its cache folder
    (0700), not as the client's default, a world-readable /tmp/osrcp-*.json left behind per server."""
    import glob
    import stat

    from mlyard.tasks import cluster

    monkeypatch.setenv("MLYARD_CACHE_DIR", str(tmp_path / "cache"))
    before = set(glob.glob("/tmp/osrcp-*.json"))
    assert cluster.gpu_capacity(cluster.dynamic_client(str(kubeconfig)))
    folder = tmp_path / "cache" / "kubernetes"
    assert [p.name for p in folder.glob("discovery-*.json")] and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert set(glob.glob("/tmp/osrcp-*.json")) <= before
    (tmp_path / "read-only").write_text("")  # a cache folder that cannot be made: the client still works
    monkeypatch.setenv("MLYARD_CACHE_DIR", str(tmp_path / "read-only" / "cache"))
    assert cluster.gpu_capacity(cluster.dynamic_client(str(kubeconfig)))
    for left in set(glob.glob("/tmp/osrcp-*.json")) - before:  # that fallback's file, the client's default
        os.remove(left)


def test_the_cli_refuses_it_in_one_line_before_a_run_is_made(stack, kubeconfig, tmp_path):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        before = len(client.read_flow_runs())
    out = submit(stack, kubeconfig, tmp_path, {"gpu_count": 2, "gpu_type": "Tesla-T4"})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "resources.gpu_count" in lines[0] and "at most 1" in lines[0] and "Tesla-T4" in lines[0]
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == before, "no run was made"


def test_a_request_a_node_can_hold_is_submitted(stack, kubeconfig, tmp_path, s3_server, bucket):
    import json

    from prefect.client.orchestration import get_client

    out = submit(stack, kubeconfig, tmp_path, {"gpu_count": 8, "gpu_type": "NVIDIA-A100-SXM4-80GB"},
                 MLYARD_UPLOAD_URI=f"s3://{bucket}/uploads", MLYARD_S3_ENDPOINT_URL=s3_server,  # its local source
                 MLYARD_S3_ACCESS_KEY_ID="test", MLYARD_S3_SECRET_ACCESS_KEY="test")  # goes to the platform's storage
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["id"]
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
        assert fr.job_variables["gpu_count"] == 8
        client.delete_flow_run(run_id)  # no worker of the gpu pool runs here
