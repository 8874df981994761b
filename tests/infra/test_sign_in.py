"""The cluster's one sign-in (infra/k8s/components/sign-in): the prod overlay with the component, rendered
by the real `kubectl kustomize`, strictly valid for Kubernetes 1.30 and 1.33, oauth2-proxy beside the mlyard
API in its pod under the restricted Pod Security profile, its Secret named and never rendered, and the
front door told to believe the proxy's headers, which only the proxy can send it (it listens on 127.0.0.1)."""

from __future__ import annotations

import os

import kubernetes_validate
from pod_security import violations

from mlyard.core.assets import infra
from mlyard.tasks.cluster import kustomize

K8S = infra("k8s")


def test_the_sign_in_component_puts_oauth2_proxy_in_front_of_the_door(tmp_path):
    overlay = tmp_path / "with-sign-in"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'overlays' / 'prod', overlay)}]\n"
        f"components: [{os.path.relpath(K8S / 'components' / 'sign-in', overlay)}]\n")
    objs = kustomize(overlay)
    for obj in objs:
        assert obj["kind"] != "Secret", "Secrets are referenced by name, never rendered"
        for version in ("1.30", "1.33"):
            kubernetes_validate.validate(obj, version, strict=True)
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    pod = by["Deployment", "mlyard-api"]["spec"]["template"]["spec"]
    assert violations(pod, "restricted") == []
    api, proxy = pod["containers"]
    assert {"name": "MLYARD_DOOR_TRUSTED_PROXY", "value": "true"} in api["env"]
    assert {"name": "MLYARD_DOOR_PORT", "value": "8081"} in api["env"]
    assert "--upstream=http://127.0.0.1:8081/" in proxy["args"] and "--pass-user-headers=true" in proxy["args"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in proxy["env"]} == {"mlyard-oidc"}
    assert {p["name"]: p["port"] for p in by["Service", "mlyard-api"]["spec"]["ports"]}["sign-in"] == 4180
    assert by["NetworkPolicy", "mlyard-sign-in"]["spec"]["ingress"] == [{"ports": [{"port": 4180, "protocol": "TCP"}]}]
    # without the component, nothing believes such headers
    plain = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(K8S / "overlays" / "prod")}
    env = plain["Deployment", "mlyard-api"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if e["name"] == "MLYARD_DOOR_TRUSTED_PROXY"]
