"""Notebooks on the real stack, through `mlyard notebooks` in fresh processes as a user runs it: every
action a flow run of `notebook/notebook-local` on the local pool, JupyterLab a real server the supervisor runs,
its token checked by Jupyter itself, the seed's start-up contract (cont-init.d, custom environments as
kernels) kept across stop, start and reboot."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from test_user_paths import _ok, _one_line_error, mlyard, project


def _json(*args: str):
    return json.loads(_ok(mlyard(*args, "--json")))


def _get(url: str) -> tuple[int | None, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return None, {}


def _script(path: Path, text: str, executable: bool = True) -> None:
    path.write_text(text)
    path.chmod(0o755 if executable else 0o644)


def test_a_notebook_is_created_opened_stopped_started_rebooted_and_deleted(stack, settings):
    work = project("notebooks")
    replicas = settings.home_dir / "endpoints" / "replicas" / "state"
    spec = work / "nb.yaml"

    # Bad input: one line each, nothing recorded.
    for text, words in (("name: nb1\ninstance_type: huge\n", ("instance_type", "cpu-2")),
                        ("name: nb1\ninstance_type: gpu-1\n", ("instance_type", "no GPU")),
                        ("name: nb1\nnas: {mount_name: team, uri: 'nas://nope:/x'}\n", ("nas.uri", "nope")),
                        ("name: nb1\nboot_storage_gb: 1\n", ("boot_storage_gb",)),
                        ("name: Bad_Name\n", ("name",))):
        spec.write_text(text)
        _one_line_error(mlyard("notebooks", "create", "-f", str(spec)), *words)
    assert _json("notebooks", "list") == []

    spec.write_text("name: nb1\ndescription: exploring\ndata_storage_gb: 20\n")
    view = _json("notebooks", "create", "-f", str(spec))
    assert (view["status"], view["instance_type"], view["core_type"]) == ("ACTIVE (HEALTHY)", "cpu-2", "CPU"), view
    shown = _json("notebooks", "show", "nb1")
    run, data = shown["flow_run_id"], Path(shown["data_dir"])
    url = _ok(mlyard("notebooks", "open", "nb1")).strip()
    base, token = url.split("/lab?token=")
    assert base.startswith("http://127.0.0.1:") and _get(f"{base}/api/contents")[0] == 403  # no token, no way in
    assert _get(f"{base}/api/contents?token={token}")[0] == 200
    assert stat.S_IMODE(os.stat(data.parent / "token").st_mode) == 0o600

    # The dashboard counts it and shows what it holds: as JSON, and as the page `mlyard status` links.
    board = _json("dashboard")
    assert board["usage"]["notebooks_healthy"] >= 1
    assert {"resource": "notebook nb1", "instance_type": "cpu-2", "cpu": 2.0, "gpu": 0} in board["resources"]["CPU"]
    page = _json("status")["dashboard"]
    with urllib.request.urlopen(page, timeout=30) as resp:
        html = resp.read().decode()
    assert "Notebooks ACTIVE (HEALTHY)" in html and "notebook nb1" in html and "<svg" in html
    assert _get(page.split("?")[0])[0] == 401 and _get(page.split("?")[0] + "?key=guess")[0] == 401

    # What the user puts in the data storage (and one file outside it, in boot storage).
    home = data.parent / "boot" / "home"
    assert (home / "easymaker").resolve() == data.resolve()
    (home / "scratch.txt").write_text("boot storage: gone at the next start")
    (data / "kept.txt").write_text("data storage: kept")
    init = data / "cont-init.d"
    _script(init / "20-second", "#!/bin/sh\necho second >> order.txt\n")
    _script(init / "10-first", "#!/bin/sh\necho first >> order.txt\necho to stderr >&2\nexit 3\n")
    _script(init / "30-not-executable", "#!/bin/sh\necho never\n", executable=False)
    _script(init / "40-no-shebang", "echo never\n")
    env = data / "custom-conda-envs" / "mine"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next((env / "lib").glob("python3*/site-packages"))  # ipykernel without a network: mlyard's own
    (site / "base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # A file saved where JupyterLab opens (its contents API, as the file browser saves), before the stop
    saved = urllib.request.Request(f"{base}/api/contents/saved-where-it-opens.txt?token={token}", method="PUT",
                                   data=json.dumps({"type": "file", "format": "text", "content": "mine"}).encode(),
                                   headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(saved, timeout=30) as resp:
        assert resp.status in (200, 201)
    assert (data / "saved-where-it-opens.txt").read_text() == "mine", "JupyterLab does not open in the data storage"

    _one_line_error(mlyard("notebooks", "set-type", "nb1", "cpu-4"), "ACTIVE", "stop it first")
    _one_line_error(mlyard("notebooks", "start", "nb1"), "ACTIVE", "STOPPED")
    assert _json("notebooks", "stop", "nb1")["status"] == "STOPPED"
    assert _get(f"{base}/api/contents?token={token}")[0] is None  # nothing answers on its port
    _one_line_error(mlyard("notebooks", "set-type", "nb1", "gpu-1"), "CPU", "gpu-1")
    assert _json("notebooks", "set-type", "nb1", "cpu-4")["instance_type"] == "cpu-4"

    view = _json("notebooks", "start", "nb1")
    assert view["status"] == "ACTIVE (HEALTHY)" and view["flow_run_id"] != run
    url = _ok(mlyard("notebooks", "open", "nb1")).strip()
    assert url.split("/lab?token=")[0] == base, "a restarted notebook keeps its URL"
    base, token = url.split("/lab?token=")
    status, kept = _get(f"{base}/api/contents/saved-where-it-opens.txt?token={token}")
    assert status == 200 and kept["content"] == "mine", "the file saved where JupyterLab opens is gone"
    assert not (home / "scratch.txt").exists() and (data / "kept.txt").read_text() == "data storage: kept"
    assert (data / "order.txt").read_text() == "first\nsecond\n"  # alphanumeric order
    assert (init / "10-first.exitcode").read_text().strip() == "3" and "to stderr" in (init / "10-first.output").read_text()
    assert (init / "20-second.exitcode").read_text().strip() == "0"
    log = (data / "cont-init.output").read_text()
    assert "skipped 30-not-executable: not executable" in log and "skipped 40-no-shebang: its first line" in log
    assert "10-first exited with 3" in log and not (init / "30-not-executable.exitcode").exists()
    status, specs = _get(f"{base}/api/kernelspecs?token={token}")
    assert status == 200 and "mine" in specs["kernelspecs"], specs
    assert specs["kernelspecs"]["mine"]["spec"]["argv"][0] == str(env / "bin" / "python")

    pid_before = [json.loads(p.read_text())["pid"] for p in replicas.glob("notebook:*.json")]
    assert _json("notebooks", "reboot", "nb1")["status"] == "ACTIVE (HEALTHY)"
    pids = [json.loads(p.read_text())["pid"] for p in replicas.glob("notebook:*.json")]
    assert len(pids) == len(pid_before) == 1 and pids != pid_before
    assert (data / "order.txt").read_text() == "first\nsecond\n" * 2  # at every start: the start, the reboot

    assert _json("notebooks", "rename", "nb1", "nb2")["name"] == "nb2"
    _one_line_error(mlyard("notebooks", "show", "nb1"), "nb1", "notebooks list")
    shown = _ok(mlyard("notebooks", "show", "nb2"))
    assert "ACTIVE (HEALTHY)" in shown and "cpu-4" in shown and "10-first exited with 3" in shown

    assert _json("notebooks", "delete", "nb2") == {"name": "nb2", "deleted": True}
    assert not data.parent.exists() and _json("notebooks", "list") == []
    assert not list(replicas.glob("notebook:*.json"))
