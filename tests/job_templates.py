"""The Kubernetes pools' Jobs as prefect-kubernetes' worker renders them, and their strict check.

The one exception (infra/README.md): prefect-kubernetes 0.8 refuses a template without `completions`
and `parallelism` in the pod spec, where no schema has them; `strictly_valid` checks that these two
are the only fields a strict check rejects."""

from __future__ import annotations

import copy
import uuid

import kubernetes_validate
import pytest

VERSIONS = ("1.30", "1.33")
FORCED = ("completions", "parallelism")  # prefect-kubernetes' required pod-spec fields


def render(template, values) -> dict:
    """The Job manifest the worker would create for a flow run with these job variables."""
    import asyncio

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4()))
    return cfg.job_manifest


def strictly_valid(manifest) -> dict:
    """The manifest without the two forced fields, checked strictly; the forced fields are only those."""
    pod = manifest["spec"]["template"]["spec"]
    assert all(pod.get(k) == 1 for k in FORCED)
    clean = copy.deepcopy(manifest)
    for k in FORCED:
        del clean["spec"]["template"]["spec"][k]
    for version in VERSIONS:
        kubernetes_validate.validate(clean, version, strict=True)
        with pytest.raises(kubernetes_validate.ValidationError, match="completions"):
            kubernetes_validate.validate(manifest, version, strict=True)
    return clean
