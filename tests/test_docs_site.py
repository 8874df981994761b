"""The documentation stays true: the site builds in strict mode (no broken link, no page left out of the nav,
every generated reference rendering: the CLI, the SDK, the spec fields, the settings, the HTTP API), and each folder's
README names every module the folder holds. The pages' code runs in tests/test_docs_code.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# a folder's README, and the folders (without a README of their own) whose modules it names too
READMES = {"core": ["core", "core/specs"], "flows": ["flows"], "tasks": ["tasks"], "tuning": ["tuning"],
           "schedules": ["schedules"], "registry": ["registry"], "serving": ["serving"],
           "mlyard": ["mlyard", "mlyard/cli", "mlyard/warm"]}


def unnamed_modules(root: Path) -> list[str]:
    missing = []
    for readme, folders in READMES.items():
        text = (root / readme / "README.md").read_text()
        for folder in folders:
            for module in sorted((root / folder).glob("*.py")):
                if module.name != "__init__.py" and module.name not in text and f"`{module.stem}`" not in text:
                    missing.append(f"{folder}/{module.name} (in {readme}/README.md)")
    return missing


def test_each_folders_readme_names_every_module_it_holds():
    missing = unnamed_modules(ROOT)
    assert not missing, "modules no README names (say in a line what each is for):\n" + "\n".join(missing)


def test_the_readme_check_finds_a_module_left_out(tmp_path):
    for readme, folders in READMES.items():
        for folder in folders:
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / readme / "README.md").write_text("`named.py`, and `alias`")
    (tmp_path / "tasks" / "named.py").write_text("")
    (tmp_path / "tasks" / "alias.py").write_text("")
    (tmp_path / "mlyard" / "cli" / "forgotten.py").write_text("")
    assert unnamed_modules(tmp_path) == ["mlyard/cli/forgotten.py (in mlyard/README.md)"]


def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"reference/cli", "reference/specs", "reference/settings", "reference/python", "reference/http", "tutorial",
            "quickstart"} <= pages
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "MLYARD_MLFLOW_UI_PORT" in settings and "Port of the embedded Prefect server" in settings
    specs = (tmp_path / "site" / "reference" / "specs" / "index.html").read_text()
    assert "Script inside source_uri that starts the training" in specs  # a field's description, from its model
    assert "--from-training" in (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
