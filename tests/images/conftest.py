"""The images, built once for the session by infra/docker/build.py (buildah; cached layers make a second
build quick), for the tests that run their entry points. `make images` runs these tests; `make test` leaves
them out (tests/conftest.py), since building needs buildah, mmdebstrap and several minutes."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_module():
    spec = importlib.util.spec_from_file_location("mlyard_image_build", ROOT / "infra" / "docker" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """target -> the built image's name."""
    for tool in ("buildah", "mmdebstrap", "unshare", "chroot"):
        assert shutil.which(tool), f"{tool} is not installed: `make images` installs it"
    build = _build_module()
    took = build.build(say=lambda line: print(line, file=sys.stderr))
    print("image build seconds: " + ", ".join(f"{t} {s:.0f}" for t, s in took.items()), file=sys.stderr)
    return {target: build.tag(target) for target in build.TARGETS}
