"""Images and registry accounts in a real catalog (SQLite), their Secrets as private files: the seed's
rules (issue 26 §4). The same rules against a Kubernetes API: tests/infra/test_registry_secrets.py."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from mlyard.core.errors import AlreadyExists, ImageNotFound, InUse, RegistryAccountNotFound, SpecError
from mlyard.core.specs import TrainingSpec, load_spec
from mlyard.core.specs.image import ImageSpec, RegistryAccountSpec, parse_image
from mlyard.registry.images import FileCredentials, Images

REG = "example-kr1-registry.container.nhncloud.com"


@pytest.fixture()
def images(catalog, tmp_path):
    return Images(catalog, FileCredentials(tmp_path / "secrets"))


def account(name="team", registry=REG, username="AK1", password="s3cret-1"):
    return RegistryAccountSpec(name=name, registry=registry, username=username, password=password)


@pytest.mark.parametrize(("address", "parts"), [
    ("ubuntu", ("docker.io", "library/ubuntu", None, None)),
    ("pytorch/pytorch:2.4.0-cuda12.1", ("docker.io", "pytorch/pytorch", "2.4.0-cuda12.1", None)),
    (f"{REG}/registry/custom-training:v1", (REG, "registry/custom-training", "v1", None)),
    ("localhost:5000/a/b@sha256:" + "a" * 64, ("localhost:5000", "a/b", None, "sha256:" + "a" * 64)),
])
def test_addresses_parse_as_the_distribution_grammar_does(address, parts):
    p = parse_image(address)
    assert (p.registry, p.repository, p.tag, p.digest) == parts


@pytest.mark.parametrize("address", ["Registry.example/Upper:1", "reg.example/a:", "reg.example//a", "a b", "x" * 600])
def test_a_bad_address_is_refused_naming_the_field(address):
    with pytest.raises(SpecError) as refused:
        load_spec(ImageSpec, {"name": "img", "address": address}, source="image")
    assert "address" in str(refused.value)


def test_the_password_is_a_private_secret_and_never_printed(images, tmp_path):
    info = images.create_account(account())
    secret = tmp_path / "secrets" / f"{info.secret_name}.dockerconfigjson"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    auth = json.loads(secret.read_text())["auths"][REG]
    assert base64.b64decode(auth["auth"]).decode() == "AK1:s3cret-1"
    shown = json.dumps([info.as_dict(), images.get_account("team").as_dict(),
                        [a.as_dict() for a in images.list_accounts()]])
    assert "s3cret" not in shown and "password" not in shown
    assert "s3cret" not in repr(account())
    with pytest.raises(AlreadyExists):
        images.create_account(account())
    assert len(list((tmp_path / "secrets").iterdir())) == 1, "the refused duplicate left no Secret"


def test_a_new_login_remakes_the_secret_and_a_new_name_does_not(images, tmp_path):
    info = images.create_account(account())
    secret = tmp_path / "secrets" / f"{info.secret_name}.dockerconfigjson"
    before = (secret.stat().st_ino, secret.read_text())
    renamed = images.update_account("team", new_name="team-ncr", description="NCR of the vision team")
    assert (renamed.name, renamed.credentials_version, renamed.secret_name) == ("team-ncr", 1, info.secret_name)
    assert (secret.stat().st_ino, secret.read_text()) == before, "a name change leaves the Secret alone"
    relogin = images.update_account("team-ncr", password="s3cret-2")
    assert relogin.credentials_version == 2
    assert base64.b64decode(json.loads(secret.read_text())["auths"][REG]["auth"]).decode() == "AK1:s3cret-2"
    with pytest.raises(SpecError) as refused:
        images.update_account("team-ncr", username="AK2")
    assert "password" in str(refused.value)
    with pytest.raises(RegistryAccountNotFound):
        images.update_account("team", description="gone")


def test_private_images_need_their_registrys_account(images):
    images.create_account(account())
    images.create_account(account("hub", registry="docker.io", username="me"))
    with pytest.raises(SpecError) as no_account:
        images.create_image(ImageSpec(name="custom", address=f"{REG}/registry/custom-training:v1"))
    assert "account" in str(no_account.value) and REG in str(no_account.value)
    with pytest.raises(SpecError) as wrong_registry:
        images.create_image(ImageSpec(name="custom", address=f"{REG}/registry/custom-training:v1", account="hub"))
    assert "'hub'" in str(wrong_registry.value) and "docker.io" in str(wrong_registry.value)
    with pytest.raises(RegistryAccountNotFound):
        images.create_image(ImageSpec(name="custom", address=f"{REG}/r/c:v1", account="nobody"))
    made = images.create_image(ImageSpec(name="custom", address=f"{REG}/registry/custom-training:v1", account="team"))
    assert (made.account, made.registry, made.pull_secret) == ("team", REG, images.get_account("team").secret_name)
    public = images.create_image(ImageSpec(name="public", address="quay.io/jupyter/base-notebook:2024-10-01",
                                           kind="notebook"))
    assert public.pull_secret is None
    assert [i.name for i in images.list_images("notebook")] == ["public"]


def test_what_a_specs_image_resolves_to(images):
    images.create_account(account())
    images.create_image(ImageSpec(name="custom", address=f"{REG}/registry/custom-training:v1", account="team"))
    secret = images.get_account("team").secret_name
    assert images.resolve("custom") == images.resolve(f"{REG}/registry/custom-training:v1")
    assert (images.resolve("custom").address, images.resolve("custom").pull_secret) == (
        f"{REG}/registry/custom-training:v1", secret)
    assert images.resolve("docker.io/library/python:3.11").pull_secret is None
    with pytest.raises(ImageNotFound):
        images.resolve("nothing-like-it")
    with pytest.raises(SpecError) as unregistered:
        images.resolve(f"{REG}/registry/other:v2", "training.image")
    message = str(unregistered.value)
    assert "training.image" in message and "mlyard images create" in message and "--account team" in message


def test_what_is_in_use_cannot_be_deleted_and_the_error_names_the_users(images, catalog, tmp_path):
    from mlyard.registry import Templates

    images.create_account(account())
    images.create_image(ImageSpec(name="custom", address=f"{REG}/registry/custom-training:v1", account="team"))
    images.create_image(ImageSpec(name="custom-2", address=f"{REG}/registry/custom-training:v2", account="team"))
    with pytest.raises(InUse) as account_in_use:
        images.delete_account("team")
    assert "image custom" in str(account_in_use.value) and "image custom-2" in str(account_in_use.value)
    Templates(catalog).create("resnet", TrainingSpec(name="resnet", source_uri=".", entry_point="t.py", image="custom"))
    with pytest.raises(InUse) as image_in_use:
        images.delete_image("custom", lambda info: ["training nightly (RUNNING)"])
    assert "template resnet" in str(image_in_use.value) and "training nightly (RUNNING)" in str(image_in_use.value)
    images.delete_image("custom-2")
    Templates(catalog).delete("resnet")
    images.delete_image("custom")
    secret = images.get_account("team").secret_name
    images.delete_account("team")
    assert not (tmp_path / "secrets" / f"{secret}.dockerconfigjson").exists()
    assert images.list_accounts() == [] and images.list_images() == []
