"""A notebook's storage on this machine, without the stack: boot storage is made anew at every start
with links to the data storage and a NAS share; deleting a notebook never reaches into the share."""

from __future__ import annotations

import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs.notebook import NotebookSpec
from mlyard.tasks import notebook_boot, notebooks


def test_boot_storage_is_made_anew_and_deleting_the_notebook_keeps_the_nas_share(tmp_path):
    share = tmp_path / "nas-root" / "team"
    share.mkdir(parents=True)
    (share / "shared.csv").write_text("a,b\n1,2\n")
    root = notebooks.prepare(tmp_path / "home", 7)
    (root / "data" / "kept.txt").write_text("kept")

    home = notebook_boot.reset_boot(root, {"team": share})
    (home / "scratch.txt").write_text("boot storage")
    (home / "team" / "written-in-the-notebook.txt").write_text("on the share")
    home = notebook_boot.reset_boot(root, {"team": share})  # the next start
    assert not (home / "scratch.txt").exists() and (home / "easymaker" / "kept.txt").read_text() == "kept"
    assert (home / "team" / "shared.csv").exists()

    notebooks.remove(tmp_path / "home", 7)
    assert not root.exists()
    assert sorted(p.name for p in share.iterdir()) == ["shared.csv", "written-in-the-notebook.txt"]


def test_a_nas_share_must_be_a_mounted_folder_that_exists(tmp_path):
    spec = NotebookSpec(name="nb", nas={"mount_name": "team", "uri": "nas://nas-1:/team"})
    with pytest.raises(SpecError, match="nas-1.*no mount root"):
        notebooks.nas_path(spec, {})
    with pytest.raises(SpecError, match="that exists"):
        notebooks.nas_path(spec, {"nas-1": tmp_path})
    (tmp_path / "team").mkdir()
    assert notebooks.nas_path(spec, {"nas-1": tmp_path}) == tmp_path / "team"
    with pytest.raises(ValueError, match="nas://"):
        NotebookSpec(name="nb", nas={"mount_name": "team", "uri": "s3://bucket/x"})
