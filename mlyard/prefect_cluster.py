"""The platform's pools, deployments and crash automation on a cluster's Prefect server (`mlyard k8s apply
--prefect-api-url`): the Kubernetes pools' base job templates with the install's values, then what
mlyard/prefect_setup.py registers on one machine's server, on these pools."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlyard.core.names import PLACES
from mlyard.core.specs.cluster import ClusterValues
from mlyard.core.specs.training import RUN_ACCOUNT
from mlyard.prefect_setup import (
    CPU_POOL,
    CPU_TEMPLATE,
    GPU_POOL,
    GPU_TEMPLATE,
    PROJECT_ROOT,
    ensure_crash_detection,
    ensure_pools,
    register_deployments,
    withdraw_deployments,
)


def cluster_pool_template(path: Path, values: ClusterValues, image: str) -> dict:
    """A Kubernetes pool's base job template with the install's defaults: its namespace, `image`, the runs'
    service account (infra/k8s/base/flow-runs.yaml: it has no rights; a multi-node training asks for the one that
    makes its nodes' Job), the pull Secrets, the settings Secret the values name, the data storage's StorageClass,
    and for the gpu pool the GPU nodes' types and GPUs a node (values.gpu: a run's gpu_type and gpu_count within
    them, as Prefect checks job variables against the template's schema; the Run form lists the types)."""
    template = json.loads(path.read_text())
    props = template["variables"]["properties"]
    props["namespace"]["default"] = values.namespace
    props["image"]["default"] = image
    props["service_account_name"]["default"] = RUN_ACCOUNT  # no rights to make Jobs (flow-runs.yaml)
    props["image_pull_secrets"]["default"] = [{"name": n} for n in values.image_pull_secrets]
    if values.storage_class and "data_storage_class" in props:
        props["data_storage_class"]["default"] = values.storage_class
    if "env" in props:  # a run pod's catalog pool (tasks/cluster_connections.py), over the ConfigMap's
        from mlyard.tasks.cluster_connections import CATALOG_ENV

        props["env"]["default"] = {CATALOG_ENV: str(values.database_connections.run)}
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    for volume in pod["volumes"]:  # the install's Secret of settings, whatever the values name it
        if volume.get("secret", {}).get("secretName") == "mlyard-settings":
            volume["secret"]["secretName"] = values.secrets.settings
    if "gpu_count" in props:  # the values' GPU nodes: Prefect refuses a run's job variables beyond them
        props["gpu_count"]["maximum"] = values.gpu.per_node
        if values.gpu.types:
            props["gpu_type"]["anyOf"] = [{"type": "string", "enum": list(values.gpu.types)}, {"type": "null"}]
    return template


def register_on_cluster(api_url: str, values: ClusterValues, echo=print) -> None:
    """On a cluster's Prefect (`mlyard k8s apply --prefect-api-url`): the gpu and cpu pools with the
    install's job template defaults (the gpu pool's image is the CUDA training image: its runs' scripts
    import torch with CUDA; the cpu pool's the platform's), the crash automation, and every deployment on
    those pools (its auth string, when the server has one, from PREFECT_API_AUTH_STRING as for any client)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    images = {GPU_POOL: values.images.training_cuda, CPU_POOL: values.image}
    pools = {name: ("kubernetes", cluster_pool_template(path, values, images[name]))
             for name, path in ((GPU_POOL, GPU_TEMPLATE), (CPU_POOL, CPU_TEMPLATE))}
    with temporary_settings({PREFECT_API_URL: api_url}):
        ensure_pools(echo, pools=pools, limits=values.pool_concurrency.model_dump())  # its fields: gpu, cpu
        ensure_crash_detection()
    env = {**os.environ, "PREFECT_API_URL": api_url, "MLYARD_IMAGE": values.image, "MLYARD_GPU_IMAGE": images[GPU_POOL],
           "MLYARD_TRAINING_CPU_IMAGE": values.images.training_cpu, "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT)}
    register_deployments(env, pools=(GPU_POOL, CPU_POOL))
    with temporary_settings({PREFECT_API_URL: api_url}):
        withdraw_deployments((GPU_POOL, CPU_POOL), named=PLACES)  # as an older mlyard named them
    echo(f"registered on {api_url}: pools {GPU_POOL} and {CPU_POOL}, their deployments, the crash automation")
