"""`mlyard trainings tensorboard ID`: TensorBoard on the logs a training's script wrote to
EM_TENSORBOARD_LOG_DIR, as EasyMaker's training list opens it: from a fresh CLI process, on 127.0.0.1 behind
a token only the command prints, gone when the command stops."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from test_user_paths import BIN, _ok, _one_line_error, mlyard, project, user_dir

SCRIPT = """
import os
from torch.utils.tensorboard import SummaryWriter

writer = SummaryWriter(os.environ["EM_TENSORBOARD_LOG_DIR"])
for step in range(5):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
writer.close()
print("accuracy=0.9", flush=True)
"""


def test_a_trainings_tensorboard_opens_on_its_logs_and_stops_with_the_command(stack):
    work = project("tensorboard")
    (work / "algo").mkdir()
    (work / "algo" / "train.py").write_text(SCRIPT)
    (work / "quiet").mkdir()
    (work / "quiet" / "train.py").write_text("print('accuracy=0.5')\n")
    for name, folder in (("tb-logs", "algo"), ("tb-none", "quiet")):
        (work / f"{name}.yaml").write_text(f"name: {name}\nsource_uri: {folder}\nentry_point: train.py\n")
    done = json.loads(_ok(mlyard("train", "-f", "tb-logs.yaml", "--json", cwd=work)))
    quiet = json.loads(_ok(mlyard("train", "-f", "tb-none.yaml", "--json", cwd=work)))
    shown = json.loads(_ok(mlyard("trainings", "show", done["training_id"][:8], "--json")))
    assert shown["links"]["tensorboard"] == f"mlyard trainings tensorboard {done['training_id'][:8]}", shown["links"]
    assert "tensorboard" not in json.loads(_ok(mlyard("trainings", "show", quiet["training_id"][:8], "--json")))["links"]
    _one_line_error(mlyard("trainings", "tensorboard", quiet["training_id"][:8]), "training", "EM_TENSORBOARD_LOG_DIR")

    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    proc = subprocess.Popen([str(BIN / "mlyard"), "trainings", "tensorboard", done["training_id"][:8], "--port", "0",
                             "--json"], cwd=user_dir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if not first:
            proc.wait(10)
            raise AssertionError(f"tensorboard said nothing: exit {proc.returncode} {proc.stderr.read()}")
        opened = json.loads(first)
        url, token = opened["url"].split("?token=")[0], opened["token"]
        assert url.startswith("http://127.0.0.1:") and opened["url"].endswith(f"?token={token}"), opened
        assert opened["live"] is False, opened
        # without the token: 401 before TensorBoard reads anything (another local account, a guessed token)
        for headers in ({}, {"Authorization": "Bearer guessed"}, {"Cookie": "mlyard_tensorboard=guessed"}):
            try:
                urllib.request.urlopen(urllib.request.Request(url + "data/logdir", headers=headers), timeout=10)
                raise AssertionError(f"TensorBoard answered without its token ({headers})")
            except urllib.error.HTTPError as refused:
                assert refused.code == 401, refused.code
        # the printed URL sets the browser's cookie and drops the token from the address
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(opened["url"], timeout=10) as page:
            assert page.status == 200 and page.url == url, page.url
        auth = {"Authorization": f"Bearer {token}"}

        def get(path: str):
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=auth), timeout=10) as resp:
                return json.loads(resp.read())

        deadline, tags = time.monotonic() + 60, {}
        while "loss" not in json.dumps(tags) and time.monotonic() < deadline:  # TensorBoard reads the files
            tags = get("data/plugin/scalars/tags")
            time.sleep(0.5)
        assert "loss" in json.dumps(tags), tags
        with opener.open(url + "data/plugin/scalars/tags", timeout=10) as resp:  # the browser, by its cookie
            assert "loss" in resp.read().decode()
        run = next(iter(tags))
        points = get(f"data/plugin/scalars/scalars?tag=loss&run={run}")
        assert [round(p[2], 3) for p in points] == [1.0, 0.5, 0.333, 0.25, 0.2], points
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: TensorBoard goes with the command
        proc.wait(30)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # nothing listens there once the command stopped
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"TensorBoard still listens at {url} after its command stopped")
