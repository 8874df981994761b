"""`mlyard demo` (what `make demo` runs): the spine end to end on the embedded stack.

1. Start the embedded stack (Prefect server, local pool + worker, deployments).
2. Train the example algorithm (examples/sklearn_digits) through the training flow.
3. Register its model in MLflow as `digits`, alias `champion`.
4. Tune its learning rate (grid, median early stopping stops the bad one); register the best trial.
5. Batch inference with digits@champion over the held-out digits (examples/data, JSONL).
6. Evaluate digits@champion and digits-tuned on them; compare the two (table and overlaid curves).
7. Serve digits@champion (`mlyard serve`) and send it one held-out digit.
8. Deploy digits@champion to the endpoint `digits` (default stage, token-protected), call it with curl,
   add a stage with digits-tuned@best, promote it, and print the endpoint's statistics.
9. Upload the example Kubeflow pipeline (examples/pipelines/example.yaml), print its graph, run it
   (kfp.local, a flow run of pipeline-run/local) and show each step's state and outputs.
10. Schedule it every minute with catch-up (its start a few minutes back: the missed slots run, oldest
    first, one at a time), show the schedule's runs and next fire times, then disable it.
11. RAG: ingest a folder of mixed documents into PostgreSQL + pgvector, ask one question through its route
    (streamed, with sources), change one file and sync (only that file is embedded again).
12. Notebook: JupyterLab (examples/notebook.yaml) with a start-up script in its storage's cont-init.d,
    rebooted (the script runs), its URL with the token; stopped at the end (its data storage stays).
13. Start the MLflow UI and print what was done and where to look.
"""

from __future__ import annotations

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
    out.rule("1. embedded stack")
    state = stack.up(settings, echo=out.print)
    connect(settings)
    done = SimpleNamespace(spec=load_spec_file(TrainingSpec, SPEC))  # what each step made, for the closing lines
    trained_once(settings, out, done)
    tuned_once(settings, out, done)
    batch_and_evaluations_once(settings, out, done)
    steps = {"served": ("7. serving digits@champion (mlyard serve)", lambda: serve_once(settings, out)),
             "endpoint": ("8. endpoint digits: default stage, token, curl, a tuned stage promoted, statistics",
                          lambda: endpoint_once(settings, out)),
             "pipeline_run": ("9. pipeline: upload, graph, run (examples/pipelines/example.yaml)", lambda: pipeline_once(out)),
             "schedule": ("10. schedule: the pipeline every minute, with catch-up", lambda: schedule_once(out)),
             "rag": ("11. RAG: ingest mixed documents, ask with streaming, change one file, sync", lambda: rag_once(settings, out)),
             "notebook": ("12. notebook: JupyterLab with a start-up script (examples/notebook.yaml)", lambda: notebook_once(out))}
    for key, (title, step) in steps.items():
        out.rule(title)
        setattr(done, key, step())
    where_to_look(settings, state, out, done)
    if not keep_running:
        stack.down(settings, echo=out.print)


def trained_once(settings: Settings, out: Console, done: SimpleNamespace) -> None:
    """Steps 2 and 3: the digits training (examples/sklearn_digits), registered as digits@champion."""
    from mlyard.flows.platform import Platform

    out.rule("2. training (examples/sklearn_digits)")
    # The examples' relative paths are relative to the project directory, wherever `mlyard demo` runs.
    done.result = result = api.run(api.TRAINING, done.spec, base=PROJECT_ROOT)
    out.rule("3. model registry")
    done.platform = p = Platform(settings)
    done.mv = mv = p.models.create_from_training("digits", result.training_id, "COMPLETE", result.run_id,
                                                 parameters={"batch_size": "32"},
                                                 description="SGD classifier on scikit-learn's digits (mlyard demo)")
    p.models.set_alias("digits", "champion", mv.version)
    out.print(f"registered digits version {mv.version} ({mv.framework} {mv.framework_version}), alias champion")


def tuned_once(settings: Settings, out: Console, done: SimpleNamespace) -> None:
    """Step 4: the tuning of examples/tune.yaml, its trials, its best registered as digits-tuned@best."""
    from mlyard.tunings import trials

    out.rule("4. hyperparameter tuning (examples/tune.yaml)")
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


def batch_and_evaluations_once(settings: Settings, out: Console, done: SimpleNamespace) -> None:
    """Steps 5 and 6: a batch inference of digits@champion, then both models evaluated and compared."""
    import time

    from mlyard import evaluations

    out.rule("5. batch inference (examples/batch.yaml)")
    outputs = settings.home_dir / "outputs" / f"demo-{int(time.time())}"
    done.batch = batch = api.run(api.BATCH, BATCH_SPEC, sets={"output_uri": str(outputs / "digits-batch")},
                                 base=PROJECT_ROOT)
    first = next(iter(batch.outputs.values()))
    out.print(f"{batch.rows} rows ({batch.failed_rows} failed) at {batch.rows_per_second:,.0f} rows/s -> {first}")
    with open(first) as fh:
        out.print("  first prediction: " + fh.readline().strip()[:150])
    out.rule("6. evaluation and comparison (examples/evaluate.yaml)")
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


def where_to_look(settings: Settings, state: Any, out: Console, d: SimpleNamespace) -> None:
    """Step 13: what the demo made, the UIs with how to sign in, and commands to try next."""
    out.rule("13. where to look")
    try:  # a UI slow to start on a busy machine never fails the demo: everything is recorded already
        mlflow_url = stack_ui.start_mlflow_ui(settings, echo=out.print)
    except StackError as exc:
        mlflow_url = f"not up yet ({exc}); try `.venv/bin/mlyard ui mlflow` again"
    result, tuned, champion, tuned_eval = d.result, d.tuned, d.champion, d.tuned_eval
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    out.print(f"""[bold]Done.[/bold]
  training     {d.spec.name}  id {result.training_id}  COMPLETE  ({metrics})
  MLflow run   {result.run_id} in experiment '{result.experiment}'
  model        digits version {d.mv.version}  (digits@champion)
  tuning       {tuned.tuning_id}  COMPLETE ({tuned.reason}), best accuracy={tuned.best_value:.4f}
               {tuned.best_params}  ->  model digits-tuned version {d.tv.version}
  batch        {d.batch.batch_id}  COMPLETE  {d.batch.rows} rows -> {d.batch.output_uri}
  serving      {d.served}
  endpoint     {d.endpoint}
  pipeline     {d.pipeline_run}
  schedule     {d.schedule}
  RAG          {d.rag}
  notebook     {d.notebook}
  evaluations  {champion.evaluation_id}  digits@champion  accuracy={champion.metrics['accuracy']:.4f}
               {tuned_eval.evaluation_id}  digits-tuned@best  accuracy={tuned_eval.metrics['accuracy']:.4f}
               comparison picture {d.picture}
  Prefect UI   {state.ui_url}/runs/flow-run/{result.training_id}
               {stack_ui.prefect_sign_in(settings)}
               press Run on deployment train/local to train again from the UI
  MLflow UI    {mlflow_url}
               {stack_ui.mlflow_sign_in(settings)}

  Try:  .venv/bin/mlyard trainings list
        .venv/bin/mlyard models show digits
        .venv/bin/mlyard tunings trials {tuned.tuning_id}
        .venv/bin/mlyard evaluations show {champion.evaluation_id}
        .venv/bin/mlyard evaluations compare {champion.evaluation_id} {tuned_eval.evaluation_id}
        .venv/bin/mlyard batch -f examples/batch.yaml --set output_uri=/tmp/digits-batch
        .venv/bin/mlyard serve digits@champion --port 8080   (then the curl in the README)
        .venv/bin/mlyard endpoints show digits
        .venv/bin/mlyard endpoints stats digits --png digits-stats.png
        .venv/bin/mlyard pipeline-runs list   /   .venv/bin/mlyard pipelines graph example --out example.png
        .venv/bin/mlyard schedules show every-minute   /   .venv/bin/mlyard schedules enable every-minute
        .venv/bin/mlyard notebooks start demo-lab   /   .venv/bin/mlyard notebooks open demo-lab
        .venv/bin/mlyard rags query handbook "How do I rotate a token?"   /   mlyard rags history handbook
        .venv/bin/mlyard logs --training {result.training_id[:8]}   /   mlyard logs -c inference --endpoint digits -f
        .venv/bin/mlyard dashboard
        .venv/bin/mlyard train -f examples/train.yaml --submit
        .venv/bin/mlyard down      (stops the stack; state stays in {settings.home_dir})""")
    if (where := stack_ui.how_to_find(settings)) is not None:
        out.print(f"  {where}")


def notebook_once(out: Console) -> str:
    """Create the notebook demo-lab (again, if an earlier demo left one), a start-up script, a reboot
    that runs it, its URL; stopped at the end (`mlyard notebooks start demo-lab` brings it back)."""
    import os
    from pathlib import Path

    from mlyard import notebooks
    from mlyard.core.errors import NotebookNotFound

    try:
        notebooks.delete("demo-lab", wait=True)
    except NotebookNotFound:
        pass
    view = notebooks.create(PROJECT_ROOT / "examples" / "notebook.yaml", sets={"name": "demo-lab"}, wait=True)
    out.print(f"notebook demo-lab: {view['status']} on {view['instance_type']} ({view['cpus']} cores)")
    data = Path(notebooks.show("demo-lab")["data_dir"])
    script = data / "cont-init.d" / "10-hello"
    script.write_text("#!/bin/sh\necho \"hello from $(basename \"$0\") at start-up; data storage: $PWD\"\n")
    os.chmod(script, 0o755)
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
    import time

    view = pipelines.run({"name": f"demo-{int(time.time())}", "pipeline": "example",
                          "parameters": {"epochs": 2, "rows": 100}}, wait=True)
    for step, node in view["nodes"].items():
        out.print(f"  {step:<10} {node['state']}" + (f" (x{node['runs']})" if node["runs"] > 1 else ""))
    for o in view["outputs"]:
        out.print(f"  output {o['task']}/{o['name']} ({o['bytes']} bytes)")
    return f"run {view['id']} {view['status']}"


def schedule_once(out: Console) -> str:
    import time
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
    import sys
    import time

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
                            on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        print()
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
    import os
    import socket
    import subprocess
    import sys
    import time
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
    import time
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

