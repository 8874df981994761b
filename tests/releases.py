"""Another release of mlyard as its image holds it, for the tests' nodes (tests/kubelet.py `images`): a commit's
files (`git archive`) and `.venv`, a Python whose `mlyard` is that checkout's and whose other packages are this
environment's (the third-party pins of both releases are the same)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def release_tree(tree: Path, commit: str, release: str | None = None) -> Path:
    """`commit`'s files in `tree` (made, readable by the pods' users) with their environment; `release`: its
    core/names.RELEASE rewritten to say another (an image of another release, built from this code)."""
    import pytest

    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"commit {commit} is not in this clone ({archive.stderr.decode().strip()}): the test needs the "
                    "history (git fetch --unshallow)")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    if release is not None:
        names = tree / "core" / "names.py"
        text = names.read_text()
        assert 'RELEASE = "' in text
        names.write_text(text.replace('RELEASE = "', f'RELEASE = "{release}"  # was "', 1))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tree / ".venv")], check=True)
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "prefect").is_dir())
    site = next((tree / ".venv" / "lib").glob("python3*/site-packages"))
    # the checkout first; then this environment's packages, its .pth files read (the editable mlyard's comes
    # after the checkout, so the checkout's `mlyard` is the one imported)
    (site / "00-release.pth").write_text(f"{tree}\nimport site; site.addsitedir({ours!r})\n")
    for folder in [tree, *tree.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    return tree
