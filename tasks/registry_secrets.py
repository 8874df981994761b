"""Registry accounts' Secrets on a cluster, and a spec's image as a pod's image and pull Secrets.

On a cluster each account is a `kubernetes.io/dockerconfigjson` Secret in the platform's namespace,
made by mlyard (label `mlyard.io/registry-account`); every pod whose image belongs to the account
names it in `imagePullSecrets`. On one machine the same Secret is a private file (mlyard.registry.images.
FileCredentials); a run submitted from there to a Kubernetes pool copies it to the cluster first
(`ensure_pull_secret`), so the pod's node can pull.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from mlyard.core.environment import own_image
from mlyard.core.settings import Settings
from mlyard.registry.images import SECRET_PREFIX, FileCredentials, Images, ResolvedImage

TYPE = "kubernetes.io/dockerconfigjson"
KEY = ".dockerconfigjson"
LABEL = "mlyard.io/registry-account"


class KubeCredentials:
    """Registry Secrets in `namespace`: `put(replace=True)` deletes the old Secret and creates a new one
    (a new uid: pods started from now on pull with the new login)."""

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def body(self, secret_name: str, config_json: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": TYPE,
                "metadata": {"name": secret_name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "mlyard", LABEL: "true"}},
                "data": {KEY: base64.b64encode(config_json.encode()).decode()}}

    def put(self, secret_name: str, config_json: str, *, replace: bool) -> None:
        if replace:
            self.delete(secret_name)
        self.core.create_namespaced_secret(self.namespace, self.body(secret_name, config_json))

    def ensure(self, secret_name: str, config_json: str) -> bool:
        """Make the Secret hold `config_json`; True when it had to be written."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.core.read_namespaced_secret(secret_name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            found = None
        if found is not None and (found.data or {}).get(KEY) == self.body(secret_name, config_json)["data"][KEY]:
            return False
        self.put(secret_name, config_json, replace=found is not None)
        return True

    def delete(self, secret_name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_secret(secret_name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def credentials(settings: Settings):
    """Where this platform keeps registry Secrets: the cluster's namespace (settings.registry_secrets =
    kubernetes, the default in a pod) or private files under the home."""
    if settings.registry_secrets_on_cluster:
        from mlyard.tasks.kubernetes import cluster_client

        return KubeCredentials(cluster_client("registry_secrets", "kubernetes"), settings.kube_namespace)
    return FileCredentials(settings.secrets_path)


def images(settings: Settings) -> Images:
    """The catalog's images and registry accounts, with their Secrets where settings keep them (a pod
    without the shared catalog refuses, as every platform part does)."""
    from mlyard.core.settings import require_shared_stores
    from mlyard.registry.catalog import Catalog

    require_shared_stores(settings)
    return Images(Catalog(settings.catalog_db_url), credentials(settings))


def pod_image(job_variables: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """A Kubernetes pool's job variables with `image` resolved: a registered image's address, and its
    account's pull Secret added to `image_pull_secrets` (made on the cluster when it lives in a file)."""
    ref = job_variables.get("image")
    if not ref:
        return job_variables
    settings = settings or Settings()
    resolved = images(settings).resolve(ref)
    out = {**job_variables, "image": resolved.address}
    if resolved.pull_secret:
        ensure_pull_secret(resolved, settings)
        pulls = [s for s in job_variables.get("image_pull_secrets") or [] if s.get("name") != resolved.pull_secret]
        out["image_pull_secrets"] = [*pulls, {"name": resolved.pull_secret}]
    return out


def ensure_pull_secret(resolved: ResolvedImage, settings: Settings) -> None:
    """On one machine submitting to a cluster: copy the account's Secret from its private file to the
    cluster's namespace (nothing to do when the Secrets live on the cluster)."""
    if settings.registry_secrets_on_cluster or not resolved.pull_secret:
        return
    assert resolved.pull_secret.startswith(SECRET_PREFIX)
    config_json = FileCredentials(settings.secrets_path).read(resolved.pull_secret)
    if config_json is None:
        return  # made on the cluster by another platform instance; the pod's pull says if it is not
    from mlyard.core.errors import SpecError
    from mlyard.tasks.kubernetes import cluster_client

    try:
        api = cluster_client("image", resolved.address)
    except SpecError:  # no kubeconfig here: the Secret may have been made on the cluster already
        logging.getLogger("mlyard.images").warning(
            "no Kubernetes cluster is configured here (KUBECONFIG): could not copy the pull Secret %s of image %s "
            "to it; if the cluster lacks it, its pod cannot pull the image", resolved.pull_secret, resolved.address)
        return
    KubeCredentials(api, settings.kube_namespace).ensure(resolved.pull_secret, config_json)


def check_pod_image(ref: str, settings: Settings | None = None) -> None:
    """In a pod: the spec's `image` must be what this pod runs. A run made through mlyard (CLI, Python,
    trials) gets it as the job variable `image`; a run started from the Prefect UI's Run button does not
    (its form takes the spec, the job variables apart), so it would train in the pool's default image. Such a
    run is refused in one line saying which job variables to set. The pod's image is the one its worker rendered
    into the pool's job template (MLYARD_POD_IMAGE): the run asks the cluster's API nothing, which its pod may not
    reach. Where no template set it, the check is skipped with a warning."""
    from mlyard.core.errors import SpecError

    settings = settings or Settings()
    resolved = images(settings).resolve(ref)
    running = own_image()
    if running is None:
        logging.getLogger("mlyard.images").warning("this run's pod does not say its image (MLYARD_POD_IMAGE, set by "
                                                   "the pools' job templates): could not check that it runs %s",
                                                   resolved.address)
        return
    if running != resolved.address:
        pulls = f' and image_pull_secrets [{{"name": "{resolved.pull_secret}"}}]' if resolved.pull_secret else ""
        raise SpecError("image", ref, f"this run's pod runs {running}, not {resolved.address}: a run started from the "
                        f"Prefect UI takes its image from the job variables; set image {resolved.address}{pulls} "
                        "there, or start it with `mlyard train -f SPEC --submit --pool gpu`, which sets them")
