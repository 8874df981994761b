"""Build mlyard's images (infra/docker/mlyard.Dockerfile) on a machine without a Docker engine or a reachable
image registry, as `make images` does: Debian's buildah builds the Dockerfile (`--isolation chroot`,
`--layers`: a second build reuses every layer whose inputs did not change), and the base the Dockerfile
names, `debian:12-slim`, is made from Debian's own packages with mmdebstrap when the machine has none.

    python infra/docker/build.py dist                 # dist/: the wheel and the images' pinned requirements
    python infra/docker/build.py [TARGET ...]         # dist, then the images (all targets by default)

pip inside a build gets this machine's package settings for the duration of each RUN, never in a layer:
its configuration file, CA bundle, local wheel folders and file:// indexes are mounted read-only (what
`pip config list` names). The images are tagged `localhost/mlyard-TARGET:test`. Standard library only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "mlyard.Dockerfile"
TARGETS = ("platform", "serving", "training-cpu", "training-cuda", "notebook")
BASE = "docker.io/library/debian:12-slim"
MIRRORS = ("deb http://deb.debian.org/debian bookworm main", "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")


def tag(target: str) -> str:
    return f"localhost/mlyard-{target}:test"


def dist(out: Path = ROOT / "dist") -> Path:
    """The wheel (`pip wheel --no-deps`) and the requirements files the Dockerfile installs: the platform's
    dependencies, and the torch and notebook extras, as pyproject.toml names them (constraints.txt pins them)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("mlyard-*.whl"):
        old.unlink()
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder: what it left would ship too
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, cwd=out)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    files = {"requirements.txt": project["dependencies"],
             "requirements-torch.txt": project["optional-dependencies"]["torch"],
             "requirements-notebook.txt": project["optional-dependencies"]["notebook"]}
    for name, lines in files.items():
        (out / name).write_text("".join(f"{line}\n" for line in lines))
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder
    return out


def _has_image(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def base_image(say=print) -> None:
    """`debian:12-slim` from Debian's packages (mmdebstrap's minbase, about a minute), unless it is there."""
    if _has_image(BASE):
        return
    import tempfile

    say(f"making {BASE} from Debian's packages (mmdebstrap) ...")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", str(tar), *MIRRORS], check=True)
        ctr = subprocess.run(["buildah", "from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
        try:
            subprocess.run(["buildah", "add", "--quiet", ctr, str(tar), "/"], check=True, capture_output=True)
            subprocess.run(["buildah", "config", "--cmd", "/bin/bash", "--env",
                            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ctr], check=True)
            subprocess.run(["buildah", "commit", "--quiet", ctr, BASE], check=True, capture_output=True)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)


BUILD_CA = "/run/mlyard-build/ca.crt"  # where a RUN step finds this machine's CA bundle (never in a layer)


def pip_mounts(folder: Path) -> tuple[list[str], dict[str, str]]:
    """`-v SRC:DST:ro` arguments that give pip inside a RUN step this machine's settings, and those settings:
    one pip.conf made in `folder` from what `pip config list` says here (its files and PIP_* variables), with
    the CA bundle at BUILD_CA, and the local wheel folders, file:// indexes and constraint files it names. Not
    the image's own /etc/ssl (Debian's ca-certificates package writes there)."""
    values = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, str] = {}
    for key, value in re.findall(r"^[^.\n]*\.([\w-]+)='([^']*)'$", values, re.M):
        settings[key] = value
    cert = Path(settings.pop("cert", "/etc/ssl/certs/ca-certificates.crt"))
    mounts = ["-v", f"{folder / 'pip.conf'}:/etc/pip.conf:ro"]
    if cert.exists():
        settings["cert"] = BUILD_CA
        mounts += ["-v", f"{cert}:{BUILD_CA}:ro"]
    (folder / "pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    paths = {Path(word.removeprefix("file://")) for value in settings.values() for word in value.split()
             if word.removeprefix("file://").startswith("/") and word != BUILD_CA}
    paths = {p.parent if p.name == "simple" else p for p in paths}  # an index's pages link to files beside them
    return mounts + [arg for p in sorted(paths) if p.exists() for arg in ("-v", f"{p}:{p}:ro")], settings


def cpu_torch(settings: dict[str, str]) -> bool:
    """Whether the training-cpu image can have torch's CPU build: a local wheel of it where pip's
    configuration points (find-links), or PyTorch's own index where pip's configuration names no local
    wheels (a machine that reaches the internet). Else PyPI's torch, the CUDA build, which runs on the CPU."""
    links = [Path(w.removeprefix("file://")) for w in settings.get("find-links", "").split()]
    if not links:
        return True
    return any(p.is_dir() and any(p.glob("torch-*+cpu*.whl")) for p in links)


def build(targets: tuple[str, ...] = TARGETS, say=print) -> dict[str, float]:
    """Build each target (its layers cached by buildah); the seconds each took."""
    import tempfile

    base_image(say)
    seconds = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:  # the context: what the Dockerfile copies, no more
        context = Path(tmp) / "context"
        mounts, settings = pip_mounts(Path(tmp))
        # pip's own configuration names where wheels lie (a CPU torch among them, or none to be had: a machine
        # that reaches the package registries alone): no PyTorch index then
        build_args = ["--build-arg", f"CA_BUNDLE={BUILD_CA}"] + (
            ["--build-arg", "TORCH_INDEX="] if "find-links" in settings else [])
        if not cpu_torch(settings):
            say("no CPU build of torch to be had here (pip's find-links holds none, PyPI serves the CUDA build): "
                "the training-cpu image carries PyPI's torch, which runs on the CPU")
        dist(context / "dist")
        shutil.copyfile(ROOT / "constraints.txt", context / "constraints.txt")
        for target in targets:
            t0 = time.monotonic()
            say(f"building {tag(target)} ...")
            subprocess.run(["buildah", "bud", "--quiet", "--isolation", "chroot", "--layers", "--pull-never",
                            *build_args, *mounts, "--target", target, "-f", str(DOCKERFILE), "-t", tag(target),
                            str(context)], check=True, stdout=subprocess.DEVNULL)
            seconds[target] = time.monotonic() - t0
    return seconds


if __name__ == "__main__":
    if sys.argv[1:] == ["dist"]:
        print(dist())
    else:
        took = build(tuple(sys.argv[1:]) or TARGETS)
        print(" ".join(f"{t}: {s:.0f} s" for t, s in took.items()))
