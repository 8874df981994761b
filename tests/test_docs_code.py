"""The documentation's code runs as written: each page of docs/ that shows Python (a tutorial) is run, its
blocks joined in order (a page that starts with `<!-- not run: why -->` is not: its code needs what a
page cannot start, such as a model server), in a fresh interpreter from a user's project folder holding a copy of examples/,
against the running test stack, with none of the harness's environment (tests/test_user_paths.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_user_paths import EXAMPLES, _ok, mlyard, project, python

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()) and "<!-- not run" not in p.read_text())


def _endpoints() -> set[str]:
    return {e["name"] for e in json.loads(_ok(mlyard("endpoints", "list", "--json")))}


def code_of(page: Path) -> str:
    return "\n".join(BLOCK.findall(page.read_text()))


def test_the_tutorial_the_quickstart_and_the_sdk_page_are_among_the_pages_run():
    assert {DOCS / "tutorial.md", DOCS / "quickstart.md", DOCS / "guide" / "python.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_a_pages_code_runs_as_written(stack, page):
    work = project(f"docs-{page.stem}")
    shutil.copytree(EXAMPLES, work / "examples")
    before = _endpoints()
    try:
        out = _ok(python(code_of(page), cwd=work))
    finally:  # the page's endpoints go: their replicas would be listeners later tests of this stack meet
        for name in _endpoints() - before:
            stages = json.loads(_ok(mlyard("endpoints", "show", name, "--json")))["stages"]
            for stage in [st["name"] for st in stages if not st["default"]]:
                _ok(mlyard("endpoints", "delete", name, "--stage", stage))
            _ok(mlyard("endpoints", "delete", name))
    if page.name == "tutorial.md":  # train, register, deploy, call, canary, then promote or roll back
        lines = out.strip().splitlines()
        assert lines[0].startswith("COMPLETE "), out
        assert "/runs/flow-run/" in lines[1] and "#/experiments/" in lines[1], out
        assert lines[2].startswith("[") and "candidate" in lines[3] and lines[3].startswith("{"), out
        assert lines[-1] in ("candidate", "default"), out
