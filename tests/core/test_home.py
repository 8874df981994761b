"""The home, found the same way by every command's first step (mlyard/warm/cli.py, standard library only)
and by Settings: MLYARD_HOME, else the nearest `.mlyard` from the current directory up."""

from __future__ import annotations


def test_the_warm_cli_and_settings_find_the_same_home(tmp_path, monkeypatch):
    from mlyard.core.settings import Settings
    from mlyard.warm import cli

    (tmp_path / ".mlyard").mkdir()
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    monkeypatch.delenv("MLYARD_HOME", raising=False)
    assert cli.home() == Settings().home_dir == (tmp_path / ".mlyard").resolve()
    monkeypatch.setenv("MLYARD_HOME", str(tmp_path / "elsewhere"))
    assert cli.home() == Settings().home_dir == (tmp_path / "elsewhere").resolve()
    monkeypatch.setenv("MLYARD_HOME", ".mlyard")  # the default, named: still looked for from here up
    assert cli.home() == Settings().home_dir == (tmp_path / ".mlyard").resolve()
