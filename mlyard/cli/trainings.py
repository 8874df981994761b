"""`mlyard train` and `mlyard trainings ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import (
    JSON,
    POOL,
    SETS,
    SUBMIT,
    ask,
    copied,
    emit,
    guard,
    run_or_submit,
    stop,
    typer_app,
)
from mlyard.core.errors import SpecError

app = typer_app("List, inspect, stop and copy trainings.")


def train(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Training spec (YAML); its fields: core/specs/training.py "
                                        "(TrainingSpec), or the train/train-local form in the Prefect UI."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Start from this training template."),
    sets: Optional[list[str]] = SETS,
    submit: bool = SUBMIT,
    pool: str = POOL,
    as_json: bool = JSON,
) -> None:
    """Run a training and stream its output; with --submit, queue it on a work pool instead."""
    def go():
        if template:
            import yaml

            extra = yaml.safe_load(file.read_text()) if file else {}
            from mlyard.core.specs import TrainingSpec

            saved = TrainingSpec.model_validate(ask("templates_show", name=template)["spec"])  # where the catalog is
            spec = saved.with_overrides(extra) if extra else saved
        elif file is None:
            raise SpecError("-f", None, "a training spec file (-f train.yaml) or --template NAME")
        else:
            spec = file
        run_or_submit("TRAINING", spec, sets, submit, pool, as_json, "trainings show")

    guard(go)


@app.command("list")
def trainings_list(experiment: Optional[str] = typer.Option(None, help="Only this experiment."),
                   limit: int = typer.Option(50, help="At most this many, newest first."),
                   as_json: bool = JSON) -> None:
    """Trainings with their status (as the console names them) and how long they ran."""
    rows = guard(lambda: ask("trainings_list", limit=limit, experiment=experiment))
    for r in rows:
        r.pop("spec")
    emit(rows, as_json, ["id", "name", "experiment", "status", "run_seconds", "created_at", "work_pool"],
         empty="no trainings yet: start one with `mlyard train -f spec.yaml`")


@app.command("show")
def trainings_show(training_id: str, as_json: bool = JSON) -> None:
    """One training: status, cause of a failure, its MLflow run, metrics and links."""
    emit(guard(lambda: ask("trainings_show", training_id=training_id)), as_json)


@app.command("stop")
def trainings_stop(training_id: str, as_json: bool = JSON) -> None:
    """Stop a training: its whole process group is ended and it becomes STOPPED."""
    stop("TRAINING", training_id, as_json)


@app.command("copy")
def trainings_copy(training_id: str,
                   name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                   sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, pool: str = POOL,
                   as_json: bool = JSON) -> None:
    """Start a new training with the same spec (and optional overrides)."""
    guard(lambda: run_or_submit("TRAINING", copied("TRAINING", training_id, name), sets, submit, pool, as_json,
                                "trainings show"))


@app.command("tensorboard")
def trainings_tensorboard(training_id: str,
                          port: int = typer.Option(6006, "--port", "-p", help="Port on 127.0.0.1 (0: a free one)."),
                          as_json: bool = JSON) -> None:
    """TensorBoard on the logs the training's script wrote to EM_TENSORBOARD_LOG_DIR (live while it runs here,
    else the copy saved with its MLflow run), on 127.0.0.1 behind a token only this command prints (other
    local accounts get 401); it stops with this command (Ctrl-C)."""
    import importlib.util
    import json
    import secrets
    import socket
    import time

    from mlyard.trainings import tensorboard_logs

    if importlib.util.find_spec("tensorboard") is None:
        guard(lambda: _refuse(SpecError("tensorboard", "not installed", "TensorBoard in mlyard's environment: "
                                        "pip install 'mlyard[tensorboard]' (make install includes it)")))
    whole_id, logdir, live = guard(lambda: tensorboard_logs(training_id))
    with socket.socket() as sock:  # a port taken is said in one line, before TensorBoard starts
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            taken = SpecError("--port", port, f"a free port ({exc.strerror}); pick another")
            guard(lambda: _refuse(taken))
        port = sock.getsockname()[1]
    from tensorboard import default, program

    token = secrets.token_urlsafe(24)
    board = program.TensorBoard(default.get_plugins(),
                                server_class=lambda app, flags: program.WerkzeugServer(_behind_token(app, token), flags))
    board.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
                          "--reload_interval", "5"])
    url = board.launch()  # it serves from a thread of this process: it ends with the command
    opened = f"{url}?token={token}"
    if as_json:  # one line, flushed: a script reads the URL while TensorBoard runs
        print(json.dumps({"training_id": whole_id, "url": opened, "token": token, "logdir": str(logdir),
                          "live": live}), flush=True)
    else:
        print(f"TensorBoard of training {whole_id[:8]} ({'live' if live else 'saved'} logs, {logdir}):\n  {opened}\n"
              "(the token keeps other local accounts out; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _behind_token(app, token: str):
    """TensorBoard's WSGI app for the holder of `token` alone: the printed URL's `?token=` sets an HttpOnly
    cookie (and drops the token from the address bar); a script may send `Authorization: Bearer TOKEN`.
    Anything else is 401 before TensorBoard reads it."""
    import hmac

    def given(environ) -> bool:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        cookies = dict(c.strip().split("=", 1) for c in environ.get("HTTP_COOKIE", "").split(";") if "=" in c)
        return any(hmac.compare_digest(v.encode(), token.encode()) for v in (
            auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else "", cookies.get("mlyard_tensorboard", "")))

    def guarded(environ, start_response):
        query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        if hmac.compare_digest(query.get("token", "").encode(), token.encode()):
            start_response("302 Found", [("Location", environ.get("PATH_INFO") or "/"), ("Set-Cookie",
                           f"mlyard_tensorboard={token}; HttpOnly; SameSite=Strict; Path=/")])
            return [b""]
        if given(environ):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"open the URL that `mlyard trainings tensorboard` printed: it carries this board's token\n"]

    return guarded


def _refuse(exc: Exception):
    raise exc
