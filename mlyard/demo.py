"""`mlyard demo` (what `make demo` runs): the spine end to end on the embedded stack, a line per step.

1. Start the embedded stack. 2-3. Train examples/sklearn_digits; register its model as digits@champion.
4. Tune its learning rate (grid, median early stopping); register the best trial as digits-tuned@best.
5-6. A batch inference with digits@champion over the held-out digits; both models evaluated and compared.
7. `mlyard serve` digits@champion and send it one digit. 8. The endpoint `digits`: a token, a curl, a stage
of digits-tuned@best added and promoted, its statistics. 9. The example Kubeflow pipeline uploaded, drawn and
run (kfp.local). 10. Scheduled every minute with catch-up (the missed slots run, oldest first), then
disabled. 11. A RAG of mixed documents on PostgreSQL + pgvector: asked (streamed, with sources), one file
changed and synced. 12. A JupyterLab notebook with a start-up script, rebooted, stopped (its storage stays).
13. The shipped SmolLM2 on the endpoint `chat`, with a token and its chat page. 14. The MLflow UI; where to look.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from mlyard import api, stack, stack_ui
from mlyard.core.connection import connect
from mlyard.core.errors import StackError
from mlyard.core.settings import Settings
from mlyard.core.specs import TrainingSpec, load_spec_file
from mlyard.prefect_setup import PROJECT_ROOT
from mlyard.tasks.processes import stop_group

SPEC = PROJECT_ROOT / "examples" / "train.yaml"
TUNE_SPEC = PROJECT_ROOT / "examples" / "tune.yaml"
BATCH_SPEC = PROJECT_ROOT / "examples" / "batch.yaml"
EVAL_SPEC = PROJECT_ROOT / "examples" / "evaluate.yaml"


def run(settings: Settings, out: Console, keep_running: bool = True) -> None:
    """Each step's details (the flows' logs too) go to <home>/logs/demo.log; the terminal gets a line per
    step as it ends (a spinner meanwhile, on a terminal), then where to look."""
    settings.home_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
    log = settings.home_dir / "logs" / "demo.log"
    with open(log, "w") as fh:
        detail = Console(file=fh, width=120, soft_wrap=True)
        out.print(f"mlyard demo: 14 steps on the embedded stack, about 4 minutes; details in {log}", highlight=False)
        saved = _stderr_to(fh.fileno())  # the flows' logs and what the processes they start say
        try:
            _steps(settings, out, detail, log)
        finally:
            _stderr_to(saved)
    if not keep_running:
        stack.down(settings, echo=out.print)


def _steps(settings: Settings, out: Console, detail: Console, log: Any) -> None:
    state = _step(out, detail, log, "1. the embedded stack", lambda: (stack.up(settings, echo=detail.print),
                                                                        connect(settings))[0])
    done = SimpleNamespace(spec=load_spec_file(TrainingSpec, SPEC))  # what each step made, for the closing lines
    steps = [("2-3. a training, its model registered as digits@champion", lambda: trained_once(settings, detail, done)),
             ("4. a tuning, its best trial registered as digits-tuned@best", lambda: tuned_once(settings, detail, done)),
             ("5-6. a batch inference, both models evaluated and compared",
              lambda: batch_and_evaluations_once(settings, detail, done)),
             ("7. digits@champion served", lambda: serve_once(settings, detail)),
             ("8. the endpoint digits: a token, calls, a tuned stage promoted", lambda: endpoint_once(settings, detail)),
             ("9. a Kubeflow pipeline uploaded and run", lambda: pipeline_once(detail)),
             ("10. the pipeline scheduled every minute, with catch-up", lambda: schedule_once(detail)),
             ("11. a RAG: mixed documents ingested, asked, synced", lambda: rag_once(settings, detail)),
             ("12. a JupyterLab notebook with a start-up script", lambda: notebook_once(detail)),
             ("13. a chat endpoint of the shipped SmolLM2, with a token and its chat page",
              lambda: chat_once(detail, done))]
    for title, step in steps:
        _step(out, detail, log, title, step)
    where_to_look(settings, state, out, done, log)


def _step(out: Console, detail: Console, log: Any, title: str, step: Any) -> Any:
    """One step: its details to the log, its outcome to the terminal in a line (a failure names the log)."""
    detail.rule(title)
    started = time.monotonic()
    try:
        with out.status(f"{title} ..."):
            said = step()
    except Exception:
        out.print(f"{title}: FAILED after {time.monotonic() - started:.0f} s (see {log})", highlight=False, soft_wrap=True)
        raise
    summary = said if isinstance(said, str) else "done"
    out.print(f"{title}: {summary}  ({time.monotonic() - started:.0f} s)", highlight=False, soft_wrap=True)
    return said


def _stderr_to(fd: int) -> int:
    """Point this process's stderr (fd 2) at `fd`: the previous one, to point it back."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    return saved


def trained_once(settings: Settings, out: Console, done: SimpleNamespace) -> str:
    """Steps 2 and 3: the digits training (examples/sklearn_digits), registered as digits@champion."""
    from mlyard.flows.platform import Platform

    # The examples' relative paths are relative to the project directory, wherever `mlyard demo` runs.
    done.result = result = api.run(api.TRAINING, done.spec, base=PROJECT_ROOT)
    done.platform = p = Platform(settings)
    done.mv = mv = p.models.create_from_training("digits", result.training_id, "COMPLETE", result.run_id, parameters={
        "batch_size": "32"}, description="SGD classifier on scikit-learn's digits (mlyard demo)")
    p.models.set_alias("digits", "champion", mv.version)
    out.print(f"registered digits version {mv.version} ({mv.framework} {mv.framework_version}), alias champion")
    return f"{result.training_id[:8]} COMPLETE, accuracy {result.metrics.get('accuracy', 0):.4f}; digits version {mv.version}"


def tuned_once(settings: Settings, out: Console, done: SimpleNamespace) -> str:
    """Step 4: the tuning of examples/tune.yaml, its trials, its best registered as digits-tuned@best."""
    from mlyard.tunings import trials

    done.tuned = tuned = api.run(api.TUNING, TUNE_SPEC, base=PROJECT_ROOT)
    for t in sorted(trials(settings.catalog_db_url, tuned.tuning_id), key=lambda r: r["number"]):
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        out.print(f"  trial {t['number']}: learning_rate={t['params'].get('learning_rate')}  {t['state']:<14} "
                  f"accuracy={value}  {t['reason'] or ''}")
    done.tv = tv = done.platform.models.create_from_training("digits-tuned", tuned.tuning_id, "COMPLETE",
                                                             tuned.best_run_id, kind="tuning",
                                                             description=f"best trial of tuning {done.spec.name}")
    done.platform.models.set_alias("digits-tuned", "best", tv.version)
    out.print(f"registered digits-tuned version {tv.version} from trial {tuned.best_trial} ({tuned.reason})")
    return f"{tuned.tuning_id[:8]} COMPLETE ({tuned.reason}), best accuracy {tuned.best_value:.4f}"


def batch_and_evaluations_once(settings: Settings, out: Console, done: SimpleNamespace) -> str:
    """Steps 5 and 6: a batch inference of digits@champion, then both models evaluated and compared."""
    from mlyard import evaluations

    outputs = settings.home_dir / "outputs" / f"demo-{int(time.time())}"
    done.batch = batch = api.run(api.BATCH, BATCH_SPEC, sets={"output_uri": str(outputs / "digits-batch")},
                                 base=PROJECT_ROOT)
    first = next(iter(batch.outputs.values()))
    out.print(f"{batch.rows} rows ({batch.failed_rows} failed) at {batch.rows_per_second:,.0f} rows/s -> {first}")
    with open(first) as fh:
        out.print("  first prediction: " + fh.readline().strip()[:150])
    done.champion = api.run(api.EVALUATION, EVAL_SPEC, sets={"output_uri": str(outputs / "eval-champion")},
                            base=PROJECT_ROOT)
    done.tuned_eval = api.run(api.EVALUATION, EVAL_SPEC, sets={"name": "digits-tuned", "model": "digits-tuned@best",
                                                               "output_uri": str(outputs / "eval-tuned")},
                              base=PROJECT_ROOT)
    table, done.picture, _ = evaluations.compare(done.platform.tracking,
                                                 [done.champion.evaluation_id, done.tuned_eval.evaluation_id], outputs)
    for row in table:
        cells = "  ".join(f"{v:>10.4f}" if isinstance(v, float) else f"{str(v):>10}" for k, v in row.items() if k != "metric")
        out.print(f"  {row['metric']:<10} {cells}")
    out.print(f"  (columns: digits@champion, digits-tuned@best)  curves: {done.picture}")
    return (f"{batch.rows} rows predicted; accuracy {done.champion.metrics['accuracy']:.4f} (champion) against "
            f"{done.tuned_eval.metrics['accuracy']:.4f} (tuned)")


def where_to_look(settings: Settings, state: Any, out: Console, d: SimpleNamespace, log: Any) -> None:
    """Step 14: the UIs with how to sign in, the chat page, and what to try next."""
    try:  # a UI slow to start on a busy machine never fails the demo: everything is recorded already
        mlflow_url = stack_ui.start_mlflow_ui(settings, echo=lambda *_: None)
    except StackError as exc:
        mlflow_url = f"not up yet ({exc}); try `.venv/bin/mlyard ui mlflow` again"
    result = d.result
    out.print(f"""
[bold]Done.[/bold] The stack keeps running (`.venv/bin/mlyard down` stops it; its state is in {settings.home_dir}).
  Prefect UI   {state.ui_url}/runs/flow-run/{result.training_id}   (the training's run)
               {stack_ui.prefect_sign_in(settings)}
  MLflow UI    {mlflow_url}
               {stack_ui.mlflow_sign_in(settings)}
  chat page    {getattr(d, "chat_page", "(the chat endpoint did not come up: see the log)")}
  details      {log}
  Try:  .venv/bin/mlyard trainings list   /   .venv/bin/mlyard trainings show {result.training_id[:8]}
        .venv/bin/mlyard train -f examples/train.yaml --set hyperparameters.epochs=5
        .venv/bin/mlyard endpoints show digits   /   .venv/bin/mlyard endpoints stats digits
        .venv/bin/mlyard rags query handbook "How do I rotate a token?"
  Next: docs/tutorial.md, the same from Python: train, register, deploy, call, canary, promote""",
              highlight=False, soft_wrap=True)
    if (where := stack_ui.how_to_find(settings)) is not None:
        out.print(f"  {where}", highlight=False, soft_wrap=True)


def notebook_once(out: Console) -> str:
    """Create the notebook demo-lab (again, if an earlier demo left one), a start-up script, a reboot
    that runs it, its URL; stopped at the end (`mlyard notebooks start demo-lab` brings it back)."""
    from pathlib import Path

    from mlyard import notebooks
    from mlyard.core.errors import NotebookNotFound

    try:
        notebooks.delete("demo-lab", wait=True)
    except NotebookNotFound:  # an earlier demo's
        pass
    view = notebooks.create(PROJECT_ROOT / "examples" / "notebook.yaml", sets={"name": "demo-lab"}, wait=True)
    out.print(f"notebook demo-lab: {view['status']} on {view['instance_type']} ({view['cpus']} cores)")
    data = Path(notebooks.show("demo-lab")["data_dir"])
    script = data / "cont-init.d" / "10-hello"
    script.write_text("#!/bin/sh\necho \"hello from $(basename \"$0\") at start-up; data storage: $PWD\"\n")
    script.chmod(0o755)
    view = notebooks.reboot("demo-lab", wait=True)
    out.print(f"rebooted: {view['status']}; {script.name}.output: {(script.parent / (script.name + '.output')).read_text().strip()}",
              highlight=False, soft_wrap=True)
    url = notebooks.open_url("demo-lab")
    out.print(f"JupyterLab (with its token): {url}", highlight=False, soft_wrap=True)
    notebooks.stop("demo-lab", wait=True)
    out.print("stopped demo-lab (its data storage stays; `mlyard notebooks start demo-lab` starts it again)")
    return "demo-lab  STOPPED  (cont-init.d/10-hello ran at its reboot; mlyard notebooks start demo-lab)"


def pipeline_once(out: Console) -> str:
    import mlyard.pipelines as pipelines
    from mlyard.core.errors import AlreadyExists

    try:
        pipelines.upload(PROJECT_ROOT / "examples" / "pipelines" / "example.yaml", name="example")
    except AlreadyExists:
        pass  # a demo run before uploaded it
    out.print(pipelines.graph("example")["text"], highlight=False, markup=False)
    view = pipelines.run({"name": f"demo-{int(time.time())}", "pipeline": "example",
                          "parameters": {"epochs": 2, "rows": 100}}, wait=True)
    for step, node in view["nodes"].items():
        out.print(f"  {step:<10} {node['state']}" + (f" (x{node['runs']})" if node["runs"] > 1 else ""))
    for o in view["outputs"]:
        out.print(f"  output {o['task']}/{o['name']} ({o['bytes']} bytes)")
    return f"run {view['id']} {view['status']}"


def schedule_once(out: Console) -> str:
    from datetime import datetime, timedelta, timezone

    import mlyard.schedule as schedules
    from mlyard.core.errors import AlreadyExists

    start = (datetime.now(timezone.utc) - timedelta(minutes=3)).replace(second=0, microsecond=0)
    try:
        view = schedules.create({"name": "every-minute", "pipeline": "example", "cron": "0 * * * * *",
                                 "start_time": start.isoformat(), "catchup": True, "max_concurrency": 1,
                                 "parameters": {"epochs": 1, "rows": 50}})
    except AlreadyExists:
        view = schedules.enable("every-minute")
    out.print(f"every-minute: {view['status']}, read as {view['read_as']}; catching up from {start.isoformat()}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = schedules.show("every-minute")
        if any(r["run_state"] == "Completed" for r in shown["runs"]):
            break
        time.sleep(2)
    for r in shown["runs"][:6]:
        out.print(f"  slot {r['slot']}  {r['slot_state']:<8} {r['run_state']}")
    out.print("  next: " + ", ".join(shown["next"][:3]))
    schedules.disable("every-minute")
    return f"every-minute (pipeline example): disabled after {sum(1 for r in shown['runs'] if r['flow_run_id'])} runs"


def rag_once(settings: Settings, out: Console) -> str:
    import mlyard.rags as rags
    from mlyard.core.errors import MlyardError

    folder = settings.home_dir / "demo" / "rag-docs"  # with the rest of the embedded state, out of the git tree
    sys.path.insert(0, str(PROJECT_ROOT / "examples" / "rag"))
    import make_docs

    names = [p.name for p in make_docs.write(folder)]
    out.print(f"documents in {folder}: {', '.join(names)}")
    try:
        rags.delete("handbook")  # a demo run before made it
    except MlyardError:
        pass
    view = rags.create({"name": "handbook", "path": str(folder), "description": "the Yardstick handbook"}, wait=True)
    out.print(f"handbook: {view['status']}, {view['store']['documents']} documents, {view['store']['chunks']} chunks")
    deadline = time.monotonic() + 300  # the query service and its SmolLM2 load (the first time: about a minute)
    while rags.show("handbook")["deploy_status"] == "DEPLOYING" and time.monotonic() < deadline:
        time.sleep(2)
    question = "How long are backups kept?"
    out.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] ", end="")
    try:
        answer = rags.query("handbook", question, stream=True,
                            on_text=lambda piece: out.print(piece, end="", markup=False, highlight=False))
        out.print()
        for src in answer["sources"]:
            out.print(f"  [{src['index']}] {src['file']}{', ' + src['where'] if src['where'] else ''}  "
                      f"score {src['score']:.2f}", highlight=False)
    except MlyardError as exc:  # a slow machine: the answer is not the point of the step, the pipeline is
        out.print(f"(no answer: {exc})")
    (folder / "notes.txt").write_text("Yardstick release notes. Version 5.0 drops the legacy API.\n")
    synced = rags.sync("handbook", wait=True)["last_ingestion"]
    out.print(f"after changing notes.txt: {synced['modified']} modified, {synced['unchanged']} unchanged, "
              f"{synced['chunks']} chunks embedded again")
    return f"handbook ({view['store']['documents']} documents): ACTIVE, synced"


def serve_once(settings: Settings, out: Console) -> str:
    """Serve digits@champion as a user would (`mlyard serve` in its own process), send it one held-out
    digit over OIP v1, print the answer, and stop it. Returns a one-line summary."""
    import json
    import socket
    import subprocess
    import urllib.request
    from pathlib import Path

    with open(PROJECT_ROOT / "examples" / "data" / "digits-test.jsonl") as fh:
        row = json.loads(fh.readline())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlyard"), "serve", "digits@champion", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=PROJECT_ROOT, env={**os.environ, "MLYARD_HOME": str(settings.home_dir)})
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        else:
            raise StackError("mlyard serve exited: " + "".join(lines)[-1500:])
        out.print(line.strip())
        ready = time.monotonic() - started
        body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP64", "data": row["pixels"]}],
                           "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            outputs = {o["name"]: o["data"] for o in json.loads(resp.read())["outputs"]}
        best = outputs["predict"][0]
        out.print(f"  POST /v2/models/digits/infer with {row['id']} (label {row['label']}) -> digit {best} "
                  f"(highest probability {max(outputs['predict_proba']):.3f})")
        return f"digits@champion answered {row['id']} (label {row['label']}) with {best} (ready in {ready:.1f} s)"
    finally:
        stop_group(proc, 15.0)


def endpoint_once(settings: Settings, out: Console) -> str:
    """The endpoint path of a user: deploy, issue a token, call with curl, add a stage, promote it,
    read the statistics. Returns a one-line summary."""
    import json
    import shutil
    import subprocess
    import urllib.request

    import mlyard.endpoints as endpoints
    from mlyard.core.errors import EndpointNotFound

    try:  # a demo run before this one left its endpoint: start again
        for st in endpoints.show("digits")["stages"]:
            if not st["default"]:
                endpoints.delete("digits", st["name"])
        endpoints.delete("digits")
    except EndpointNotFound:
        pass
    started = time.monotonic()
    view = endpoints.create({"name": "digits", "description": "mlyard demo", "stage": {
        "name": "default", "resources": [{"model": "digits@champion", "pods": 2}]}})
    out.print(f"endpoint digits ACTIVE in {time.monotonic() - started:.1f} s: 2 replicas of digits@champion "
              f"(version {view['stages'][0]['resources'][0]['model']})")
    token = endpoints.issue_token("digits", days=7)["token"]
    url = view["urls"]["default"]["digits"]
    with open(PROJECT_ROOT / "examples" / "data" / "digits-test.jsonl") as fh:
        rows = [json.loads(line)["pixels"] for line in fh][:20]
    body = json.dumps({"instances": rows[:2]})
    out.print(f"$ curl -H 'Authorization: Bearer {token[:10]}...' -d '{{\"instances\": [...2 digits...]}}' {url}")
    if shutil.which("curl"):
        answer = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {token}", "-H",
                                 "Content-Type: application/json", "-d", body, url],
                                capture_output=True, text=True, timeout=60).stdout
    else:
        req = urllib.request.Request(url, data=body.encode(), headers={"Authorization": f"Bearer {token}"})
        answer = urllib.request.urlopen(req, timeout=60).read().decode()
    out.print(f"  {answer}")
    for i in range(0, 20, 2):  # some traffic for the statistics, with probabilities (confidence)
        req = urllib.request.Request(url, data=json.dumps({"instances": rows[i:i + 2],
                                                           "parameters": {"probabilities": i % 4 == 0}}).encode(),
                                     headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(req, timeout=60).read()
    view = endpoints.add_stage("digits", {"name": "tuned", "resources": [{"model": "digits-tuned@best"}]})
    out.print(f"stage tuned ACTIVE (digits-tuned@best) at {view['urls']['stages']['tuned']['digits-tuned']}")
    view = endpoints.promote("digits", "tuned")
    out.print(f"promoted: the default stage is now {view['default_stage']}; the old default drained and was deleted")
    out.print("  (the tuned stage serves model digits-tuned: "
              f"{view['urls']['default']['digits-tuned']})")
    stats = endpoints.stats("digits", since="1h", png=settings.home_dir / "outputs" / "digits-endpoint-stats.png")
    for r in stats["stats"]:
        lat = r["latency_ms"]
        out.print(f"  {r['stage']}/{r['model']}: {r['calls']} calls, {r['failures']} failures, latency ms "
                  f"mean {lat['mean']} p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']}; "
                  f"predictions {r.get('predictions')}; average confidence {r.get('average_confidence')}")
    out.print(f"  chart: {stats['png']}")
    return f"digits at {view['urls']['default']['digits-tuned']} (token-protected; stage tuned promoted)"



def chat_once(out: Console, done: SimpleNamespace) -> str:
    """`mlyard endpoints create --chat-model smollm2 --replace`, as a user runs it."""
    from mlyard.chat_endpoint import create

    view = create("smollm2", name="chat", replace=True, echo=out.print)
    done.chat_page = view["chat_page"]
    return f"chat (smollm2) at {view['openai_base_url']}"
