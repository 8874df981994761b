"""What `make demo` prints, read by a newcomer: a line per step as it ends (details in the demo's log), and no
recipe of the Makefile's install (its comments were 42 lines of the demo's first screen)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]


def test_a_step_says_one_line_to_the_terminal_and_the_rest_to_the_log(tmp_path):
    from mlyard.demo import _step

    shown, logged = io.StringIO(), io.StringIO()
    out, detail = Console(file=shown, width=80), Console(file=logged, width=120)

    def step():
        for n in range(30):
            detail.print(f"detail line {n}")
        return "a summary a newcomer reads, longer than the terminal is wide, kept whole on one line"

    _step(out, detail, tmp_path / "demo.log", "7. a step", step)
    assert shown.getvalue().count("\n") == 1 and "7. a step: a summary" in shown.getvalue()
    assert "detail line 29" in logged.getvalue() and "detail" not in shown.getvalue()
    with pytest.raises(RuntimeError):
        _step(out, detail, tmp_path / "demo.log", "8. a failing step", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    assert re.search(r"8\. a failing step: FAILED after \d+ s \(see .*demo\.log\)", shown.getvalue())


def test_the_install_recipe_is_not_echoed():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.SILENT: \$\(STAMP\)$", makefile, re.M)
    assert re.search(r"^\t@\$\(VENV\)/bin/mlyard demo$", makefile, re.M)
