"""The restore drill on one machine (issue 70 §3), as the platform's owner takes it, in fresh processes from a
project folder: a stack of its own is populated (a project, a member and their key, a training and its model
version, an endpoint and its token, a schedule firing every 20 s with catch-up), backed up while it runs, stopped
and wiped, restored, and started again. Everything is found again: the same inventory, the member's key
working, the endpoint answering its old token with the same answer, and the schedule catching up the slots
missed since the backup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.controlplane import free_port

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Owner:
    """The platform owner's shell in a project folder of its own: PATH, HOME, LANG and the stack's ports."""

    def __init__(self, folder: Path):
        self.folder = folder
        port = free_port()
        while any(free_port() == port + i for i in range(1, 4)):  # the ports after it are the stack's next parts
            port = free_port()
        self.env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                    "LANG": "C.UTF-8", "MLYARD_PREFECT_PORT": str(port), "MLYARD_API_PORT": str(free_port()),
                    "MLYARD_GATEWAY_PORT": str(free_port()), "MLYARD_DOOR_PORT": str(free_port()),
                    "MLYARD_MLFLOW_UI_PORT": str(free_port()),
                    # the PostgreSQL tier (Makefile): the stores' databases in the embedded PostgreSQL, dumped
                    **{k: v for k, v in os.environ.items() if k == "MLYARD_DATABASE"}}

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run([str(BIN / "mlyard"), *args], cwd=self.folder, env={**self.env, **(env or {})},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"mlyard {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def json(self, *args: str, env: dict[str, str] | None = None):
        return json.loads(self(*args, "--json", env=env))

    def python(self, code: str) -> dict:
        out = subprocess.run([str(BIN / "python"), "-c", textwrap.dedent(code)], cwd=self.folder, env=self.env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


CALL = """
    import json, time, urllib.error, mlyard
    digit = [[0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0] * 8]
    deadline = time.monotonic() + 60
    while True:  # a stack just started: its replicas answer within seconds, 503 with Retry-After meanwhile
        try:
            print(json.dumps(mlyard.endpoint("drill").call({"instances": digit}, token=TOKEN)))
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(1)
"""


def _slots(owner: Owner) -> list[datetime]:
    return sorted(datetime.fromisoformat(r["slot"]) for r in owner.json("schedules", "show", "every-20s")["runs"])


def test_a_stack_backed_up_wiped_and_restored_holds_everything_it_held(tmp_path):
    owner = Owner(tmp_path / "project")
    shutil.copytree(EXAMPLES, owner.folder / "examples")  # a user's copy, as the tutorial has it
    home = owner.folder / ".mlyard"
    owner("up")
    try:
        # a team: a project, a member, their key
        owner("projects", "create", "vision")
        key = owner.json("users", "create", "alice")["key"]
        owner("projects", "add-member", "vision", "alice", "--role", "editor")
        # a training, its model version, an endpoint and its token, answering
        made = owner.python("""
            import json, mlyard
            run = mlyard.train("examples/train.yaml")
            model = run.register("drill-digits", alias="champion")
            endpoint = model.deploy("drill")
            print(json.dumps({"training": run.id, "model": model.ref, "token": endpoint.issue_token()}))
        """)
        answer = owner.python(CALL.replace("TOKEN", repr(made["token"])))
        # a pipeline on a schedule every 20 s, catching up what it misses
        owner("pipelines", "upload", "examples/pipelines/example.yaml", "--name", "example")
        start = (datetime.now(timezone.utc) - timedelta(seconds=1)).replace(microsecond=0)
        (owner.folder / "every.yaml").write_text(textwrap.dedent(f"""
            name: every-20s
            pipeline: example
            cron: "*/20 * * * * *"
            start_time: {start.isoformat()}
            max_concurrency: 10
            catchup: true
            parameters: {{epochs: 1, rows: 50}}
        """))
        owner("schedules", "create", "-f", "every.yaml")
        deadline = time.monotonic() + 60
        while not _slots(owner):
            assert time.monotonic() < deadline, "the schedule made no run"
            time.sleep(1)

        backup = tmp_path / "backup"
        manifest = owner.json("admin", "backup", str(backup))
        taken = datetime.fromisoformat(manifest["taken_at"])
        before = manifest["inventory"]  # what the backup holds, counted in its copies (a dump's own snapshot)
        kept = sorted(p.name for p in (backup / "databases").iterdir())
        on_postgres = os.environ.get("MLYARD_DATABASE") == "postgres"
        assert {"catalog.dump", "mlflow.dump", "prefect.dump"} <= set(kept) if on_postgres else \
            {"catalog.db", "mlflow.db", "prefect__prefect.db", "postgres.dump"} <= set(kept), kept
        assert oct(backup.stat().st_mode & 0o777) == "0o700"
        assert all(p.stat().st_mode & 0o077 == 0 for p in backup.rglob("*")), "a backup holds secrets: its owner's alone"
    finally:
        owner("down")

    shutil.rmtree(home)
    time.sleep(max(0.0, 21 - (datetime.now(timezone.utc) - taken).total_seconds()))  # a slot passes while it is gone
    said = owner("admin", "restore", str(backup))
    assert "start it with `mlyard up`" in said
    owner("up")
    try:
        after = owner.json("admin", "inventory")
        growing = ("schedule_slots", "audit_records", "endpoint_stat_minutes", "live_counts")  # what the running adds
        for store in ("catalog", "mlflow"):  # nothing lost, nothing else added
            assert {t: n for t, n in after[store].items() if t not in growing} == \
                {t: n for t, n in before[store].items() if t not in growing}, store
        assert all(after["catalog"][t] >= n for t, n in before["catalog"].items() if t in growing)
        assert after["prefect"]["deployment"] == before["prefect"]["deployment"]
        assert before["catalog"]["api_keys"] >= 1 and before["mlflow"]["model_versions"] >= 1
        # the member's key, the training, the model version, the endpoint with its old token
        member = owner.json("whoami", env={"MLYARD_API_KEY": key,
                                           "MLYARD_API_URL": f"http://127.0.0.1:{owner.env['MLYARD_API_PORT']}"})
        assert member["name"] == "alice" and member["roles"] == {"vision": "editor"}, member
        assert owner.json("trainings", "show", made["training"])["status"] == "COMPLETE"
        assert owner.json("models", "show", made["model"])["aliases"] == ["champion"]
        assert owner.python(CALL.replace("TOKEN", repr(made["token"]))) == answer
        # the schedule catches up: a run for each slot missed while the platform was gone
        deadline = time.monotonic() + 90
        while not [slot for slot in _slots(owner) if slot > taken]:
            assert time.monotonic() < deadline, f"no slot after the backup ({taken}) was run: {_slots(owner)}"
            time.sleep(1)
    finally:
        owner("down")


def test_a_restore_that_fails_leaves_the_home_empty_and_bad_places_are_refused_in_one_line(tmp_path):
    import io
    import tarfile

    import pytest

    from mlyard import backup as backups
    from mlyard.core.errors import SpecError
    from mlyard.core.names import RELEASE
    from mlyard.core.settings import Settings

    home = tmp_path / "project" / ".mlyard"
    made = tmp_path / "backup"
    (made / "databases").mkdir(parents=True)
    with tarfile.open(made / "home.tar", "w") as tar:  # a file, then a database copy that is not a database
        info = tarfile.TarInfo("secrets/kept")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    (made / "databases" / "catalog.db").write_text("not a database")
    manifest = {"release": RELEASE, "catalog_schema": "0020", "home": str(home), "database": "sqlite",
                "taken_at": "2026-11-30T00:00:00+00:00", "inventory": {}, "seconds": 0.1}
    (made / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(home=home)
    with pytest.raises(SpecError, match=r"catalog.db.* is not valid: a SQLite database"):
        backups.restore(settings, made, echo=lambda _: None)
    assert home.is_dir() and list(home.iterdir()) == [], "nothing half-restored is left"
    elsewhere = Settings(home=tmp_path / "other" / ".mlyard")
    with pytest.raises(SpecError, match="MLYARD_HOME: .* the home the backup was taken from"):
        backups.restore(elsewhere, made, echo=lambda _: None)
    (home / "catalog.db").write_text("x")
    with pytest.raises(SpecError, match="an absent or empty home"):
        backups.restore(settings, made, echo=lambda _: None)
    (made / "manifest.json").write_text(json.dumps({**manifest, "release": "99.0.0"}))
    (home / "catalog.db").unlink()
    with pytest.raises(SpecError, match="restore it with that release"):
        backups.restore(settings, made, echo=lambda _: None)
