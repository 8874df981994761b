"""Registry accounts as kubernetes.io/dockerconfigjson Secrets, and images as pods' `image` and
`imagePullSecrets` (issue 26 §4), against Kubernetes' own API server (tests/controlplane.py): the Secret a new login re-makes, the one a rename leaves alone, the copy a run submitted
from one machine makes, and the Job the gpu pool renders with it, strictly valid."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from job_templates import render, strictly_valid

from mlyard.core.settings import Settings
from mlyard.core.specs.image import ImageSpec, RegistryAccountSpec

REG = "registry.example.com:5000"
BIN = Path(sys.executable).parent


def _secret(api, name):
    found = [o for o in api.items("Secret", "mlyard") if o["metadata"]["name"] == name]
    return found[0] if found else None


def _login(secret) -> str:
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    return base64.b64decode(config["auths"][REG]["auth"]).decode()


def test_accounts_are_dockerconfigjson_secrets_on_the_cluster(real_api, tmp_path):
    api = real_api
    from mlyard.tasks.registry_secrets import images

    store = images(Settings(home=tmp_path / "home", registry_secrets="kubernetes"))
    info = store.create_account(RegistryAccountSpec(name="team", registry=REG, username="AK1", password="pw-1"))
    secret = _secret(api, info.secret_name)
    assert secret["type"] == "kubernetes.io/dockerconfigjson" and _login(secret) == "AK1:pw-1"
    assert not (tmp_path / "home" / "secrets").exists(), "no copy on this machine"

    store.update_account("team", new_name="team-ncr", description="vision team")
    same = _secret(api, info.secret_name)
    assert (same["metadata"]["uid"], same["metadata"]["resourceVersion"]) == (
        secret["metadata"]["uid"], secret["metadata"]["resourceVersion"]), "a rename leaves the Secret alone"

    store.update_account("team-ncr", username="AK2", password="pw-2")
    remade = _secret(api, info.secret_name)
    assert remade["metadata"]["uid"] != secret["metadata"]["uid"] and _login(remade) == "AK2:pw-2"

    store.create_image(ImageSpec(name="custom", address=f"{REG}/vision/train:v1", account="team-ncr"))
    store.delete_image("custom")
    store.delete_account("team-ncr")
    assert _secret(api, info.secret_name) is None


def test_a_run_from_this_machine_copies_the_pull_secret_and_its_job_names_it(real_api, tmp_path):
    api = real_api
    from mlyard.core.specs import TrainingSpec
    from mlyard.prefect_setup import GPU_TEMPLATE
    from mlyard.tasks.registry_secrets import images, pod_image

    settings = Settings(home=tmp_path / "home", registry_secrets="file")
    store = images(settings)
    account = store.create_account(RegistryAccountSpec(name="team", registry=REG, username="AK1", password="pw-1"))
    store.create_image(ImageSpec(name="custom", address=f"{REG}/vision/train:v1", account="team"))
    assert _secret(api, account.secret_name) is None, "file mode: nothing on the cluster yet"

    spec = TrainingSpec(name="t", source_uri="s3://b/algo", entry_point="train.py", image="custom",
                        resources={"gpu_count": 1})
    jv = pod_image(spec.job_variables(), settings)
    assert jv["image"] == f"{REG}/vision/train:v1"
    assert jv["image_pull_secrets"] == [{"name": account.secret_name}]
    copied = _secret(api, account.secret_name)
    assert copied["type"] == "kubernetes.io/dockerconfigjson" and _login(copied) == "AK1:pw-1"
    pod_image(spec.job_variables(), settings)
    assert _secret(api, account.secret_name)["metadata"]["resourceVersion"] == copied["metadata"]["resourceVersion"]

    job = strictly_valid(render(json.loads(GPU_TEMPLATE.read_text()), jv))
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": account.secret_name}]
    assert pod["containers"][0]["image"] == f"{REG}/vision/train:v1"

    public = pod_image(TrainingSpec(name="t", source_uri=".", entry_point="t.py",
                                    image="docker.io/pytorch/pytorch:2.4.0").job_variables(), settings)
    assert "image_pull_secrets" not in public


def test_a_pod_that_does_not_run_the_specs_image_is_refused_in_one_line(real_api, tmp_path, monkeypatch):
    """The Prefect UI's Run button sends the spec, not the job variables: its pod runs the pool's default
    image. The training checks the image its worker rendered into the pool's job template (prefect-kubernetes'
    own rendering), with no call to the cluster's API, which a run's pod does not reach."""
    from mlyard.core.errors import SpecError
    from mlyard.core.specs import TrainingSpec
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.prefect_cluster import cluster_pool_template
    from mlyard.prefect_setup import GPU_TEMPLATE
    from mlyard.tasks.registry_secrets import check_pod_image, images, pod_image

    settings = Settings(home=tmp_path / "home", registry_secrets="file")
    store = images(settings)
    account = store.create_account(RegistryAccountSpec(name="team", registry=REG, username="AK1", password="pw-1"))
    store.create_image(ImageSpec(name="custom", address=f"{REG}/vision/train:v1", account="team"))
    template = cluster_pool_template(GPU_TEMPLATE, ClusterValues(), "registry.example/mlyard:0.1.0")
    spec = TrainingSpec(name="t", source_uri=".", entry_point="t.py", image="custom")

    def pod_env(job_variables: dict) -> dict[str, str]:
        container = render(template, job_variables)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    from_ui, from_cli = pod_env({}), pod_env(pod_image(spec.job_variables(), settings))
    monkeypatch.setenv("MLYARD_POD_IMAGE", from_ui["MLYARD_POD_IMAGE"])
    with pytest.raises(SpecError) as refused:
        check_pod_image("custom", settings)
    line = str(refused.value)
    assert "\n" not in line and "registry.example/mlyard:0.1.0" in line and f"{REG}/vision/train:v1" in line, line
    assert account.secret_name in line and "--pool gpu" in line, line
    monkeypatch.setenv("MLYARD_POD_IMAGE", from_cli["MLYARD_POD_IMAGE"])
    check_pod_image("custom", settings)  # the pod runs the image: nothing to say
    monkeypatch.delenv("MLYARD_POD_IMAGE")
    check_pod_image("custom", settings)  # no template said it: skipped with a warning, as before a cluster


def test_the_cli_keeps_the_password_off_screen_and_refuses_in_one_line(stack, tmp_path):
    """As a user types it: a fresh `mlyard` process with the user's environment only."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    user_dir = Path(os.environ["MLYARD_HOME"]).parent

    def mlyard(*args, stdin=None):
        return subprocess.run([str(BIN / "mlyard"), *args], cwd=user_dir, env=env, input=stdin, capture_output=True,
                              text=True, timeout=120)

    made = mlyard("registry-accounts", "create", "cli-team", "--registry", REG, "--username", "AK1",
                  "--password-stdin", "--json", stdin="hunter2-secret\n")
    assert made.returncode == 0, made.stderr
    image = mlyard("images", "create", "cli-custom", "--address", f"{REG}/vision/train:v1", "--account", "cli-team",
                   "--json")
    assert image.returncode == 0 and json.loads(image.stdout)["pull_secret"], image.stderr
    listed = mlyard("registry-accounts", "list", "--json")
    assert "hunter2" not in listed.stdout + made.stdout and json.loads(listed.stdout)[0]["images"] == ["cli-custom"]

    def one_line(out, *words):
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        for word in words:
            assert word in lines[0], lines[0]

    one_line(mlyard("registry-accounts", "delete", "cli-team"), "image cli-custom")
    one_line(mlyard("images", "create", "other", "--address", f"{REG}/vision/other:v1"), "account", "cli-team")
    spec = tmp_path / "train.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "source_uri": str(tmp_path), "entry_point": "train.py",
                                    "image": f"{REG}/vision/unregistered:v1"}))
    (tmp_path / "train.py").write_text("print('never runs')\n")
    one_line(mlyard("train", "-f", str(spec), "--submit"), "image", "private", "mlyard images create")
    assert mlyard("images", "delete", "cli-custom").returncode == 0
    assert mlyard("registry-accounts", "delete", "cli-team").returncode == 0
    assert json.loads(mlyard("registry-accounts", "list", "--json").stdout) == []


def test_without_a_cluster_here_the_run_is_still_submitted_with_a_warning(tmp_path, monkeypatch, caplog):
    """The pull Secret may already be on the cluster (made there); its pod's pull says if it is not."""
    from mlyard.tasks.registry_secrets import images, pod_image

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    settings = Settings(home=tmp_path / "home", registry_secrets="file")
    store = images(settings)
    account = store.create_account(RegistryAccountSpec(name="team", registry=REG, username="AK1", password="pw-1"))
    store.create_image(ImageSpec(name="custom", address=f"{REG}/vision/train:v1", account="team"))
    with caplog.at_level("WARNING"):
        jv = pod_image({"image": "custom"}, settings)
    assert jv["image_pull_secrets"] == [{"name": account.secret_name}]
    assert any("could not copy the pull Secret" in r.getMessage() for r in caplog.records)
