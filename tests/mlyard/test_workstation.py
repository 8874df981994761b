"""A workstation's CLI against a platform it reaches over the network (here the test stack's, by its URLs
alone): images, registry accounts and templates are written to and read from the platform's catalog
through its mlyard API (MLYARD_API_URL), never kept in a catalog on the workstation; without the API a
write is refused in one line; a template's local source is refused unless it can be uploaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _workstation(tmp_path: Path, stack, **extra: str):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "MLYARD_PREFECT_API_URL": stack.api_url, "PREFECT_API_AUTH_STRING": stack.prefect_auth_string, **extra}

    def mlyard(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "mlyard"), *args], cwd=work, env=env, input=stdin, capture_output=True,
                              text=True, timeout=120)

    return mlyard, work


def _one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_a_workstation_writes_images_accounts_and_templates_to_the_platforms_catalog(stack, settings, tmp_path):
    from mlyard.tasks.registry_secrets import images

    # no mlyard API named: a write would land in a catalog of the workstation's own, which no pod reads
    alone, work = _workstation(tmp_path / "alone", stack)
    _one_line(alone("images", "create", "lost", "--address", "registry.example.com/t/lost:1"), "MLYARD_API_URL")
    assert not list((tmp_path / "alone").rglob("*.db")) and not list((tmp_path / "alone").rglob(".mlyard"))

    api = {"MLYARD_API_URL": stack.service_url, "MLYARD_INTERNAL_TOKEN": stack.internal_token}
    wrong, _ = _workstation(tmp_path / "wrong", stack, **{**api, "MLYARD_INTERNAL_TOKEN": "not-it"})
    _one_line(wrong("images", "list"), "MLYARD_INTERNAL_TOKEN")

    mlyard, work = _workstation(tmp_path / "ws", stack, **api)
    made = json.loads(_ok(mlyard("registry-accounts", "create", "ws-acct", "--registry", "registry.example.com",
                                 "--username", "robot", "--password-stdin", "--json", stdin="s3cret\n")))
    assert made["name"] == "ws-acct" and "s3cret" not in json.dumps(made)
    _ok(mlyard("images", "create", "ws-image", "--address", "registry.example.com/team/ws:v1", "--account", "ws-acct"))
    listed = json.loads(_ok(mlyard("images", "list", "--json")))
    assert [i["name"] for i in listed if i["name"] == "ws-image"] == ["ws-image"]
    assert json.loads(_ok(mlyard("registry-accounts", "show", "ws-acct", "--json")))["images"] == ["ws-image"]
    on_platform = images(settings)  # the platform's own catalog has them, and the pull Secret is the platform's
    assert on_platform.get_image("ws-image").address == "registry.example.com/team/ws:v1"
    assert on_platform.get_account("ws-acct").username == "robot"

    # a template: its local source is a path no pod reads; an object-store one is kept as given
    (work / "algo").mkdir()
    (work / "algo" / "train.py").write_text("print('ok')\n")
    (work / "t.yaml").write_text("name: ws-t\nsource_uri: algo\nentry_point: train.py\n")
    _one_line(mlyard("templates", "create", "ws-t", "-f", "t.yaml"), "source_uri", "MLYARD_UPLOAD_URI")
    (work / "t.yaml").write_text("name: ws-t\nsource_uri: s3://team-bucket/algo\nentry_point: train.py\n")
    _ok(mlyard("templates", "create", "ws-t", "-f", "t.yaml"))
    assert [t["name"] for t in json.loads(_ok(mlyard("templates", "list", "--json")))].count("ws-t") == 1
    from mlyard.commands import _templates

    assert _templates().get("ws-t").spec.source_uri == "s3://team-bucket/algo"

    for args in (("templates", "delete", "ws-t"), ("images", "delete", "ws-image"),
                 ("registry-accounts", "delete", "ws-acct")):
        _ok(mlyard(*args))
    assert "ws-image" not in {i.name for i in on_platform.list_images()}
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob(".mlyard")), "nothing kept on the workstation"
    assert os.environ["MLYARD_HOME"]  # (the harness's own home is the platform's, untouched by the workstation)


def test_an_uploads_leftovers_wait_in_the_home_and_a_killed_receivers_are_removed(tmp_path):
    """An upload's body and its unpacking wait in the home's private `uploading/` (not the machine's shared
    /tmp), named after the receiving process: what a receiver killed mid-upload left is removed by the next
    upload, and a live receiver's is kept."""
    import os
    import subprocess
    import sys

    from mlyard.project_storage import upload_scratch

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "uploading"
    folder.mkdir()
    (folder / f"body.pid{gone.pid}.x1.tar").write_bytes(b"half a tar")
    (folder / f"unpack.pid{gone.pid}.x2").mkdir()
    (folder / f"unpack.pid{gone.pid}.x2" / "model.pkl").write_bytes(b"half")
    live = folder / f"body.pid{os.getpid()}.x3.tar"
    live.write_bytes(b"being received")
    assert upload_scratch(tmp_path) == folder
    assert sorted(p.name for p in folder.iterdir()) == [live.name]
    assert folder.stat().st_mode & 0o077 == 0
