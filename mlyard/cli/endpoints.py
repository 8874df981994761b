"""`mlyard endpoints ...`: endpoints, their stages, tokens, statistics and logs (mlyard/endpoints.py),
and safe promotion: traffic shares, policies and progressive promotions (mlyard/promotion.py).
Every change is a flow run (deploy-endpoint, add-endpoint-stage, promote-endpoint-stage,
delete-endpoint, retry-endpoint-stage, sync-endpoint-code, set-endpoint-traffic,
promote-progressively, control-promotion), visible in the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, SETS, SUBMIT, ask, emit, err, guard, out, parse_sets, typer_app
from mlyard.cli.endpoint_tokens import tokens_app
from mlyard.core.errors import SpecError

app = typer_app("Endpoints: stages of model versions behind the gateway, tokens, statistics, logs.")
app.add_typer(tokens_app, name="tokens")
rollout_app = typer_app("Progressive promotion of a stage behind the endpoint's policy: start, show, pause, resume, "
                        "abort.")
app.add_typer(rollout_app, name="rollout")


def _promotion():
    import mlyard.promotion as promotion

    return promotion


def _api():
    import mlyard.endpoints as api

    return api


def _print_view(view: dict[str, Any]) -> None:
    if "deleted" in view or "flow_run_id" in view:
        emit(view, False)
        return
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}  ({'public' if view['public'] else 'token-protected'})"
              f"  default stage: {view['default_stage']}" + (f"  reason: {view['reason']}" if view.get("reason") else ""))
    rows = []
    for st in view["stages"]:
        share = (f" {st['weight']}%" if st.get("weight") else "") + (f" shadow {st['shadow']}%" if st.get("shadow") else "")
        for r in st["resources"]:
            rows.append({"stage": st["name"] + (" (default)" if st["default"] else "") + share,
                         "stage status": st["status"],
                         "gateway": st["gateway_status"], "resource": str(r["id"]), "model": r["model"],
                         "pods": str(r["pods"]), "status": r["status"],
                         "replicas": ", ".join(f"{x.get('status', '?')}" for x in st.get("replicas", [])
                                               if x.get("key", "").split(".")[2:3] == [str(r["id"])])})
    emit(rows, False, ["stage", "stage status", "gateway", "resource", "model", "pods", "status", "replicas"])
    for model, url in view.get("urls", {}).get("default", {}).items():
        out.print(f"default URL ({model}): {url}", highlight=False, soft_wrap=True)
    for stage, models in view.get("urls", {}).get("stages", {}).items():
        for model, url in models.items():
            out.print(f"stage {stage} URL ({model}): {url}", highlight=False, soft_wrap=True)
    for st in view["stages"]:
        if st.get("reason"):
            out.print(f"{st['name']}: {st['reason']}", highlight=False, soft_wrap=True)


@app.command("create")
def endpoints_create(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Endpoint spec (YAML): name, description, public, "
                                        "and the default stage with its resources; fields: core/specs/endpoint.py."),
    chat_model: Optional[str] = typer.Option(None, "--chat-model", help="Instead of --file, a chat endpoint in one "
                                             "command: smollm2 (the shipped demonstration model), a .gguf file or a "
                                             "transformers folder, registered (task=chat), served, with a token and "
                                             "its chat page."),
    name: str = typer.Option("chat", "--name", help="With --chat-model: the endpoint's (and the model's) name."),
    replace: bool = typer.Option(False, "--replace", help="With --chat-model: delete an endpoint of that name (and "
                                 "the model it registered) first."),
    sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, as_json: bool = JSON,
) -> None:
    """Deploy an endpoint with its default stage: start its replicas, wait until they are healthy, route them."""
    if (file is None) == (chat_model is None):
        def refuse():
            raise SpecError("--file/--chat-model", None, "one of them: an endpoint spec, or a chat model")
        guard(refuse)
    if chat_model is not None:
        from mlyard.chat_endpoint import create

        view = guard(lambda: create(chat_model, name=name, replace=replace,
                                    echo=lambda line: err.print(line, markup=False, highlight=False)))
        if as_json:
            return emit(view, True)
        _print_view(view)
        out.print(f"token (shown once): {view['token']}\nOpenAI base URL: {view['openai_base_url']} "
                  f"(model {view['served_model']})\nchat page: {view['chat_page']}", markup=False, highlight=False)
        return
    view = guard(lambda: _api().create(file, sets=parse_sets(sets), submit=submit))
    emit(view, True) if as_json else _print_view(view)


@app.command("deploy")
def endpoints_deploy(
    endpoint: str,
    sync: Path = typer.Option(..., "--sync", help="The folder to push: an entry script (score.py with init() and "
                              "run()) and what it loads, or a model folder (model-definition.yaml)."),
    entry_script: str = typer.Option("score.py", "--entry-script", help="The entry script, relative to the folder."),
    kind: Optional[str] = typer.Option(None, "--kind", help="entry-script or model-folder (default: model-folder "
                                       "when the folder has a model-definition.yaml)."),
    model: Optional[str] = typer.Option(None, "--model", help="The registered model the folder becomes a version of "
                                        "(default: the endpoint's name)."),
    replicas: int = typer.Option(1, "--replicas", help="Replicas of a new endpoint."),
    max_instances: Optional[int] = typer.Option(None, "--max-instances", help="The most replicas the endpoint may "
                                                "run, however scaled (default: maximumInstanceCount in "
                                                "infra/provision/inference.parameters.json, if any)."),
    public: bool = typer.Option(False, "--public", help="A new endpoint needs no token."),
    config: Optional[Path] = typer.Option(None, "--config", help="Where the endpoint URL is written (default: "
                                          "FOLDER/infra/inference.config.json, ACA_APP_ENDPOINT)."),
    submit: bool = SUBMIT, as_json: bool = JSON,
) -> None:
    """Push a folder's latest code to ENDPOINT (AI Toolkit's deploy for inference): a new model version;
    a new endpoint is deployed with it, an existing one has its replicas replaced one at a time with no
    failed request. The endpoint URL is written to inference.config.json."""
    view = guard(lambda: _api().deploy(endpoint, sync, entry_script=entry_script, kind=kind, model=model,
                                       replicas=replicas, max_replicas=max_instances, public=public, config=config,
                                       submit=submit))
    if as_json:
        emit(view, True)
        return
    _print_view(view)
    if view.get("config"):
        out.print(f"wrote {view['config']['path']}: ACA_APP_ENDPOINT={view['config']['ACA_APP_ENDPOINT']}",
                  highlight=False, soft_wrap=True)


@app.command("add-stage")
def endpoints_add_stage(
    endpoint: str,
    file: Path = typer.Option(..., "-f", "--file", help="Stage spec (YAML): name, resources (model, pods, cpu, ...)."),
    sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, as_json: bool = JSON,
) -> None:
    """Add a stage; it answers at its own URL (/ENDPOINT/stages/STAGE/...) until it is promoted."""
    view = guard(lambda: _api().add_stage(endpoint, file, sets=parse_sets(sets), submit=submit))
    emit(view, True) if as_json else _print_view(view)


@app.command("promote")
def endpoints_promote(endpoint: str, stage: str,
                      keep_old: bool = typer.Option(False, "--keep-old", help="Keep the old default stage."),
                      submit: bool = SUBMIT, as_json: bool = JSON) -> None:
    """Make STAGE the default: traffic moves at once; the old default drains, then is deleted."""
    view = guard(lambda: _api().promote(endpoint, stage, keep_old=keep_old, submit=submit))
    emit(view, True) if as_json else _print_view(view)


@app.command("delete")
def endpoints_delete(endpoint: str, stage: Optional[str] = typer.Option(None, "--stage", help="Delete only this "
                     "(non-default) stage."), submit: bool = SUBMIT, as_json: bool = JSON) -> None:
    """Delete a stage, or the endpoint with its default stage (refused while it has other stages)."""
    emit(guard(lambda: _api().delete(endpoint, stage, submit=submit)), as_json)


@app.command("retry")
def endpoints_retry(endpoint: str, stage: Optional[str] = typer.Option(None, "--stage", help="The stage (default: "
                    "the default stage)."), as_json: bool = JSON) -> None:
    """Clear errors and try again: a failed stage is deployed anew; an ACTIVE one is routed again."""
    view = guard(lambda: _api().retry(endpoint, stage))
    emit(view, True) if as_json else _print_view(view)


@app.command("list")
def endpoints_list(as_json: bool = JSON) -> None:
    """Endpoints with their status, stages and models."""
    emit(guard(lambda: ask("endpoints_list")), as_json, ["name", "status", "default_stage", "public", "stages",
                                                           "models"],
         empty="no endpoints yet: create one with `mlyard endpoints create -f endpoint.yaml`")


@app.command("show")
def endpoints_show(endpoint: str, as_json: bool = JSON) -> None:
    """An endpoint: stages, resources, statuses, the gateway's view of each replica, URLs, tokens."""
    view = guard(lambda: ask("endpoints_show", endpoint=endpoint))
    emit(view, True) if as_json else _print_view(view)


@app.command("history")
def endpoints_history(endpoint: Optional[str] = typer.Argument(None), as_json: bool = JSON) -> None:
    """Which model version served which stage, from when to when (kept after deletions)."""
    emit(guard(lambda: _api().history(endpoint)), as_json, ["endpoint", "stage", "model", "share", "shadow",
                                                            "started_at", "ended_at", "note"])


@app.command("stats")
def endpoints_stats(
    endpoint: str,
    since: str = typer.Option("1h", "--since", help="Start: a duration ago (30m, 1h, 7d) or an ISO-8601 time."),
    until: Optional[str] = typer.Option(None, "--until", help="End (default: now)."),
    stage: Optional[str] = typer.Option(None, "--stage"),
    model: Optional[str] = typer.Option(None, "--model"),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw calls, latency and predictions per class (or tokens per minute) here."),
    as_json: bool = JSON,
) -> None:
    """Calls, failures, latency (mean, p50, p95, p99), predictions per class, average confidence; for a
    generative model tokens in and out, time to first token and tokens a second; and which token, API key
    or RAG made how many of the calls (and used how many tokens)."""
    result = guard(lambda: _api().stats(endpoint, since=since, until=until, stage=stage, model=model, png=png))
    if as_json:
        emit(result, True)
        return
    rows = [{"stage": r["stage"], "model": r["model"], "calls": r["calls"], "failures": r["failures"],
             **{k: v for k, v in r["latency_ms"].items()},
             "predictions": r.get("predictions"), "avg confidence": r.get("average_confidence")} for r in result["stats"]]
    emit(rows, False, ["stage", "model", "calls", "failures", "mean", "p50", "p95", "p99", "predictions",
                       "avg confidence"], title=f"{endpoint}: {result['since']} .. {result['until']} (latency in ms)",
         empty=f"no calls to {endpoint} in that period")
    generated = [{"stage": r["stage"], "model": r["model"], "answers": t["answers"], "tokens in": t["in"],
                  "tokens out": t["out"], "first token mean": t["ttft_ms"]["mean"], "first token p95": t["ttft_ms"]["p95"],
                  "tokens/s": t["tokens_per_second"], "waited mean": t["queued_ms"]["mean"],
                  "waited max": t["queued_ms"]["max"],
                  "queue now": f"{q['generating']} generating, {q['waiting']} waiting" if (q := r.get("queue")) else "-"}
                 for r in result["stats"] if (t := r.get("tokens"))]
    if generated:
        emit(generated, False, ["stage", "model", "answers", "tokens in", "tokens out", "first token mean",
                                "first token p95", "tokens/s", "waited mean", "waited max", "queue now"],
             title="generated tokens (first token and waits for a place in the batch in ms; the queue as the last "
                   "answer left it)")
    callers = [{"stage": r["stage"], "model": r["model"], **c} for r in result["stats"] for c in r.get("callers", [])]
    if callers:
        emit(callers, False, ["stage", "model", "caller", "calls", "failures",
                              *(["tokens_in", "tokens_out"] if generated else [])], title="who called (tokens and keys)")
    if result.get("png"):
        out.print(f"chart: {result['png']}")


@app.command("logs")
def endpoints_logs(endpoint: str, tail: int = typer.Option(20, "--tail", help="How many records."),
                   as_json: bool = JSON) -> None:
    """The last inference log records (category, logLevel, body, logType, time, endpointId, ...)."""
    records = guard(lambda: _api().logs(endpoint, tail))
    if as_json:
        emit(records, True)
        return
    emit([{"time": r.get("time"), "level": r.get("logLevel"), "model": r.get("modelName"),
           "inferenceId": r.get("inferenceId"), "body": r.get("body")} for r in records], False,
         ["time", "level", "model", "inferenceId", "body"], empty="no inference log records yet")


@app.command("validate")
def endpoints_validate(file: Path = typer.Argument(..., help="An endpoint spec or a stage spec (YAML)."),
                       as_json: bool = JSON) -> None:
    """Start one replica of each resource, stream its log, and say Finished or why it failed; creates nothing."""
    import typer as _typer

    result = guard(lambda: _api().validate(file, echo=(lambda line: None) if as_json else
                                           (lambda line: out.print(line, highlight=False, markup=False))))
    if as_json:
        emit(result, True)
    else:
        for r in result["resources"]:
            out.print(f"{r['model']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else
                                                        f" (healthy after {r['seconds']} s)"))
    if result["status"] != "Finished":
        raise _typer.Exit(1)


@app.command("chat")
def endpoints_chat(endpoint: str, stage: Optional[str] = typer.Option(None, "--stage"),
                   token: Optional[str] = typer.Option(None, "--token", envvar="MLYARD_ENDPOINT_TOKEN",
                                                       help="A token of the endpoint (or MLYARD_ENDPOINT_TOKEN)."),
                   max_tokens: int = typer.Option(256, "--max-tokens"),
                   temperature: Optional[float] = typer.Option(
                       None, "--temperature", min=0, max=2,
                       help="Sampling temperature, 0 to 2 (0: greedy, the same answer every time); unset, the "
                            "model's own."),
                   open_page: bool = typer.Option(False, "--open", help="Open the chat page instead (in the browser; "
                                                  "its address, printed, holds the token in its fragment)."),
                   ) -> None:
    """Chat with an endpoint's generative model in the terminal (its OpenAI route, streamed; an empty line
    ends), or with --open on the chat page in a browser (tokens and latency per answer)."""
    from mlyard import endpoint_chat

    if open_page:
        url = guard(lambda: endpoint_chat.page(endpoint, stage=stage, token=token))
        print(url)
        import webbrowser

        if not webbrowser.open(url):
            err.print("no browser to open here: open the address above in one", style="dim")
        return
    guard(lambda: endpoint_chat.chat(endpoint, stage=stage, token=token, max_tokens=max_tokens, temperature=temperature))


@app.command("canary")
def endpoints_canary(
    endpoint: str, stage: str,
    weight: Optional[int] = typer.Option(None, "--weight", help="Percent of the default traffic STAGE "
                                         "answers (1-99; 0 stops). A caller sending x-mlyard-affinity: ID keeps one "
                                         "stage for that ID."),
    shadow: Optional[int] = typer.Option(None, "--shadow", help="Percent of the default traffic "
                                         "mirrored to STAGE: compared with the default's answers, never returned "
                                         "(0 stops)."),
    submit: bool = SUBMIT, as_json: bool = JSON,
) -> None:
    """Give a stage a share of the endpoint's default traffic, or a shadow share; every gateway routes it within 2 s."""
    view = guard(lambda: _promotion().canary(endpoint, stage, weight=weight, shadow=shadow, submit=submit))
    emit(view, True) if as_json else _print_view(view)


@app.command("policy")
def endpoints_policy(
    endpoint: str,
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Policy (YAML): steps, step_seconds, gates "
                                        "(evaluation, live, shadow), on_failure, keep_old. Without it: show the policy."),
    remove: bool = typer.Option(False, "--remove", help="Remove the endpoint's policy."),
    sets: Optional[list[str]] = SETS, as_json: bool = JSON,
) -> None:
    """Set, show or remove the endpoint's promotion policy (what `rollout start` follows)."""
    api = _promotion()
    if remove:
        guard(lambda: api.set_policy(endpoint, None))
        out.print(f"{endpoint} has no promotion policy now")
        return
    kept = guard(lambda: api.set_policy(endpoint, file, sets=parse_sets(sets)) if file else api.policy(endpoint))
    if kept is None and not as_json:
        out.print(f"{endpoint} has no promotion policy: set one with `mlyard endpoints policy {endpoint} -f policy.yaml`")
        return
    emit(kept, True) if as_json else emit(kept, False)


@rollout_app.command("start")
def rollout_start(
    endpoint: str, stage: str,
    policy: Optional[Path] = typer.Option(None, "--policy", help="A policy (YAML) for this promotion; it becomes the "
                                          "endpoint's. Default: the endpoint's policy."),
    submit: bool = SUBMIT, as_json: bool = JSON,
) -> None:
    """Promote STAGE step by step behind the policy's gates (a failed gate rolls back at once); --submit queues it.

    Evaluation gate, shadow gate, then each step's weight held and judged. Without --submit it runs here until
    it ends."""
    result = guard(lambda: _promotion().rollout(endpoint, stage, policy=policy, submit=submit))
    if as_json or "promotion" not in result:
        emit(result, as_json)
        return
    _print_promotion(result["promotion"])


def _print_promotion(p: dict[str, Any]) -> None:
    where = f"step {p['step'] + 1} of {len(p['steps'])} ({p['weight']}%)" if p["phase"] == "steps" else p["phase"]
    out.print(f"[bold]{p['endpoint']}/{p['stage']}[/bold]  {p['status']}  {where}"
              + (f"  reason: {p['reason']}" if p["reason"] else ""), soft_wrap=True)
    for g in p["gates"]:
        verdict = {True: "passed", False: "FAILED", None: "waiting"}[g["passed"]]
        step = f" (step {g['step']}, {g['weight']}%)" if "step" in g else ""
        out.print(f"  {g['gate']} gate{step}: {verdict}: {g['why']}", highlight=False, soft_wrap=True)


@rollout_app.command("show")
def rollout_show(endpoint: str, as_json: bool = JSON) -> None:
    """The promotion in progress (or the last), each gate's judgement, and the stages' shares."""
    result = guard(lambda: _promotion().show(endpoint))
    if as_json:
        emit(result, True)
        return
    shown = result["active"] or (result["promotions"][-1] if result["promotions"] else None)
    if shown is None:
        out.print(f"{endpoint} has had no promotion: `mlyard endpoints rollout start {endpoint} STAGE`")
    else:
        _print_promotion(shown)
    shares = result["shares"]
    taken = sum(s["weight"] for s in shares.values())
    out.print("shares: " + ", ".join(f"{name} {100 - taken if s['default'] else s['weight']}%"
                                     + (f" (shadow {s['shadow']}%)" if s["shadow"] else "")
                                     for name, s in shares.items()), highlight=False, soft_wrap=True)
    for name, s in shares.items():  # the gateway's running totals of the stages that share traffic
        live = s["live"]
        if live["requests"] or live["mirrored_pairs"]:
            out.print(f"  {name}: {live['requests']} requests, error rate {live['error_rate']}, p99 {live['p99_ms']} ms"
                      + (f"; {live['mirrored_pairs']} mirrored, agreement {live['agreement']}"
                         if live["mirrored_pairs"] else ""), highlight=False, soft_wrap=True)


def _control(action: str):
    def command(endpoint: str, as_json: bool = JSON) -> None:
        promo = guard(lambda: getattr(_promotion(), action)(endpoint))
        emit(promo, True) if as_json else _print_promotion(promo)

    command.__doc__ = {"pause": "Hold the promotion in progress at its current weight.",
                       "resume": "Go on with the promotion in progress (at its step; a new run if its run ended).",
                       "abort": "End the promotion in progress: the candidate's weight goes to 0 at once."}[action]
    return command


for _action in ("pause", "resume", "abort"):
    rollout_app.command(_action)(_control(_action))
