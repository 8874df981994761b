"""One release for every image of an install: the manifests `mlyard k8s render` makes are this mlyard's
(core/names.RELEASE), and each image that runs mlyard's code (the platform's, both training images, the
serving and the notebook image) must carry the same. Nothing on a workstation can look inside an image, so the
cluster does: `jobs` renders a Job per image (`mlyard-release-<field>`) whose one container runs this module in
that image; `mlyard k8s apply` runs them before the migration Job and stops, naming the image and both
releases, when one carries another release (or cannot be pulled) — before any schema or Deployment moved.
The runtime variants' images (vLLM, TGI, ...) are the engines' own and hold no mlyard: they are not checked.

`python -m mlyard.tasks.cluster_release` (the Jobs' command): prints `release: <field> carries mlyard X` and
exits 0 when X is MLYARD_RELEASE, else 3 with the line saying both.
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING

from mlyard.core.names import RELEASE

if TYPE_CHECKING:
    from mlyard.core.specs.cluster import ClusterValues

NAME = "mlyard-release"  # the Jobs' name prefix and their app.kubernetes.io/name label
EXIT_OTHER_RELEASE = 3


def images(values: ClusterValues) -> dict[str, str]:
    """Each values field naming an image of mlyard's -> that image (one field per image: the first names it)."""
    fields = {"image": values.image, "images.training_cpu": values.images.training_cpu,
              "images.training_cuda": values.images.training_cuda, "images.serving": values.images.serving,
              "images.notebook": values.images.notebook}
    seen: dict[str, str] = {}
    for field, image in fields.items():
        if image not in seen.values():
            seen[field] = image
    return seen


def jobs(values: ClusterValues, migrate: dict) -> list[dict]:
    """A Job per image of `images`, its pod as the migration Job's (`migrate`, rendered for the values: its
    security context, pull Secrets, resources) with that image and no Secret or ConfigMap: it reads nothing."""
    made = []
    for field, image in images(values).items():
        job = copy.deepcopy(migrate)
        name = f"{NAME}-{field.removeprefix('images.').replace('_', '-')}"
        labels = {"app.kubernetes.io/name": NAME, "mlyard.io/image-field": field}
        job["metadata"] = {"name": name, "namespace": values.namespace, "labels": labels}
        job["spec"]["backoffLimit"] = 0
        job["spec"]["template"]["metadata"] = {"labels": labels}
        pod = job["spec"]["template"]["spec"]
        pod.pop("volumes", None)
        container = pod["containers"][0]
        container.update(name="release", image=image, command=["python", "-m", "mlyard.tasks.cluster_release"],
                         env=[{"name": "MLYARD_RELEASE", "value": RELEASE}, {"name": "MLYARD_IMAGE_FIELD", "value": field}],
                         resources={"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
        for key in ("envFrom", "volumeMounts"):
            container.pop(key, None)
        made.append(job)
    return made


def checked(objs: list[dict], dyn, namespace: str, timeout: float) -> tuple[list[dict], list[dict], str]:
    """`mlyard k8s apply`'s first step: the release check Jobs of the rendered `objs` applied and waited for
    (`waited`); (those Jobs, their apply rows, the line saying the release they carry)."""
    from mlyard.tasks.cluster_apply import apply, wait_for_job

    checks = [o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == NAME]
    rows = [a.__dict__ for a in apply(checks, dyn)]
    return checks, rows, waited(dyn, namespace, checks, timeout, wait_for_job)


def waited(dyn, namespace: str, checks: list[dict], timeout: float, wait_for_job) -> str:
    """Until every check Job has ended (`wait_for_job`: tasks/cluster_apply.py's): one line saying the release
    they all carry; StackError naming the first image that carries another (or did not run)."""
    from mlyard.core.errors import StackError

    for job in checks:
        name, field = job["metadata"]["name"], job["metadata"]["labels"]["mlyard.io/image-field"]
        ok, log = wait_for_job(dyn, namespace, name, timeout)
        if not ok:
            line = next((s for s in reversed(log.splitlines()) if s.startswith("release:")), None)
            what = line.removeprefix("release: ") if line else f"{field} did not run mlyard ({log.strip()[-200:] or 'no log'})"
            raise StackError(f"{what}: set {field} to mlyard {RELEASE}'s image (or apply with the mlyard of the images); "
                             f"nothing else was applied (kubectl -n {namespace} logs job/{name})")
    return f"images: {len(checks)} carry mlyard {RELEASE}"


def main() -> int:
    from mlyard.core.environment import release_check

    field, expected = release_check()
    if RELEASE == expected:
        print(f"release: {field} carries mlyard {RELEASE}", flush=True)
        return 0
    print(f"release: {field} carries mlyard {RELEASE}, and the install's manifests are mlyard {expected or '(unnamed)'}'s",
          flush=True)
    return EXIT_OTHER_RELEASE


if __name__ == "__main__":
    sys.exit(main())
