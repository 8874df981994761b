"""Endpoints from Python (and the CLI's `mlyard endpoints`): every change is a flow run of
flows/endpoint_*.py, on the running platform; reads come from the catalog and the gateway.

    import mlyard.endpoints as endpoints

    endpoints.create("endpoint.yaml")                    # deploy-endpoint: a view with its URLs
    endpoints.add_stage("iris", {"name": "canary", "resources": [{"model": "iris@challenger"}]})
    endpoints.promote("iris", "canary")                  # traffic moves; the old default drains and goes
    token = endpoints.issue_token("iris", days=30)["token"]
    endpoints.stats("iris", since="1h")

A spec is checked (names free, model versions exist, limits) before any flow run starts, so a bad one
fails with one line naming the field. `submit=True` queues the change on the local pool instead, like
Run in the Prefect UI.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mlyard.api import load as _spec  # a spec from an object, a mapping or a YAML file, with --set merged
from mlyard.core.connection import connect, gateway_url
from mlyard.core.errors import SpecError
from mlyard.core.names import (
    FLOW_ADD_STAGE,
    FLOW_DELETE_ENDPOINT,
    FLOW_DEPLOY_ENDPOINT,
    FLOW_PROMOTE_STAGE,
    FLOW_SYNC_ENDPOINT,
    deployment,
)
from mlyard.core.specs.endpoint import DeletionSpec, EndpointSpec, PromotionSpec, StageChangeSpec, StageSpec, SyncSpec
from mlyard.schedules.moments import when  # noqa: F401 - the stats' --since/--until, as callers import it here
from mlyard.tasks.processes import stop_group
from mlyard.teams import endpoint_in_reach
from mlyard.warm_api import member_api, post


def connect_platform():
    from mlyard.flows.platform import Platform

    return Platform(connect())


def endpoint_registry(p=None):
    from mlyard.registry.endpoints import Endpoints

    return Endpoints((p or connect_platform()).catalog)


def endpoint_view(endpoint: str) -> dict[str, Any]:
    """The endpoint with its stages, as the caller may see it: the platform's answer for a team member (their
    key: one of another project does not exist), else the catalog's."""
    url = member_api()
    return post(url, "/v1/queries/endpoints_show", {"endpoint": endpoint}) if url else endpoint_registry().get(endpoint)


def act(flow_name: str, module_fn: str, spec: Any, submit: bool) -> Any:
    """Run an endpoint flow here (its result as a dict, or RunFailed with why) or queue it on the local
    pool (its flow run), as mlyard/submit.py's `run_or_queue` decides every run."""
    from mlyard.core.settings import Settings
    from mlyard.submit import run_or_queue

    ref = deployment(flow_name)
    submit = submit or Settings().api_key is not None  # a team member's change runs on the platform's pool, as them
    done = run_or_queue(ref, module_fn, spec, queue=submit, fail=flow_name.upper().replace("-", " "))
    if submit:
        return {"flow_run_id": done["id"], "flow_run": done["name"], "deployment": ref,
                "status": "CREATE REQUESTED"}
    return done.model_dump() if hasattr(done, "model_dump") else done  # the flows' typed results, as dicts


def create(spec: EndpointSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
           submit: bool = False) -> dict[str, Any]:
    """Deploy an endpoint with its default stage (deploy-endpoint); its view with URLs."""
    spec = _spec(EndpointSpec, spec, sets)  # a bad spec is refused before Prefect and MLflow are imported
    from mlyard.core.settings import Settings
    from mlyard.tasks.endpoints import check_stage

    if Settings().api_key is None:  # a member's is checked by the platform, as it makes the run (mlyard/member_runs.py)
        p = connect_platform()
        check_stage.fn(endpoint_registry(p), p.models, spec.stage, "stage", new_endpoint=spec.name)
    return act(FLOW_DEPLOY_ENDPOINT, "mlyard.flows.endpoint_deploy:deploy_endpoint", spec, submit)


def add_stage(endpoint: str, stage: StageSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
              submit: bool = False) -> dict[str, Any]:
    """Add a stage (add-endpoint-stage); it answers at its own URL until promoted."""
    stage_spec = _spec(StageSpec, stage, sets)
    from mlyard.core.settings import Settings
    from mlyard.tasks.endpoints import check_stage

    if Settings().api_key is None:  # a member's is checked by the platform, as it makes the run (mlyard/member_runs.py)
        p = connect_platform()
        check_stage.fn(endpoint_registry(p), p.models, stage_spec, "stage", endpoint=endpoint)
    return act(FLOW_ADD_STAGE, "mlyard.flows.endpoint_add_stage:add_stage", StageChangeSpec(endpoint=endpoint, stage=stage_spec),
                submit)


def promote(endpoint: str, stage: str, *, keep_old: bool = False, submit: bool = False) -> dict[str, Any]:
    """Make `stage` the default (promote-endpoint-stage): traffic moves at once, then the old default
    stage drains and is deleted (kept with `keep_old`)."""
    spec = PromotionSpec(endpoint=endpoint, stage=stage, keep_old=keep_old)
    view = endpoint_view(endpoint)
    st = next((s for s in view["stages"] if s["name"] == stage), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of {endpoint}: {', '.join(s['name'] for s in view['stages'])}")
    if st["status"] != "ACTIVE":
        raise SpecError("stage", stage, f"an ACTIVE stage ({stage} is {st['status']})")
    return act(FLOW_PROMOTE_STAGE, "mlyard.flows.endpoint_promote:promote_stage", spec, submit)


def delete(endpoint: str, stage: str | None = None, *, submit: bool = False) -> dict[str, Any]:
    """Delete a stage, or the endpoint (refused while it has stages other than the default)."""
    from mlyard.core.settings import Settings

    if Settings().api_key is None:  # a member's is checked by the platform, as it makes the run (mlyard/member_runs.py)
        endpoint_registry().check_delete(endpoint, stage)
    return act(FLOW_DELETE_ENDPOINT, "mlyard.flows.endpoint_delete:delete_endpoint", DeletionSpec(endpoint=endpoint, stage=stage),
                submit)


def retry(endpoint: str, stage: str | None = None, *, submit: bool = False) -> dict[str, Any]:
    """Clear a stage's errors and try again (the default stage when none is named)."""
    view = endpoint_view(endpoint)
    stage = stage or view["default_stage"]
    return act("retry-endpoint-stage", "mlyard.flows.endpoint_retry:retry_stage", PromotionSpec(endpoint=endpoint, stage=stage),
                submit)


def deploy(endpoint: str, sync: str | Path, *, entry_script: str = "score.py", kind: str | None = None,
           model: str | None = None, replicas: int = 1, max_replicas: int | None = None, public: bool = False,
           config: str | Path | None = None, submit: bool = False) -> dict[str, Any]:
    """Push the latest code of folder `sync` to `endpoint` (sync-endpoint-code; AI Toolkit's deploy for
    inference): it becomes a new version of the registered model (`model`, default the endpoint's
    name); a new endpoint is deployed with it, an existing one has its replicas replaced one at a time
    with no failed request. The view (with `config`: what was written to inference.config.json)."""
    from mlyard.serving import modelfolder
    from mlyard.tasks.endpoints import check_code, check_target

    def where(path: str | Path) -> str:  # absolute: a queued run works in another directory
        return str(Path(path).expanduser().resolve())

    spec = _spec(SyncSpec, {"endpoint": endpoint, "source": where(sync), "entry_script": entry_script, "kind": kind,
                            "model": model, "replicas": replicas, "max_replicas": max_replicas, "public": public,
                            "config": where(config) if config else None}, None)
    if member_api() is not None:  # a member's folder goes to their project; the platform checks and pushes it
        from mlyard.endpoint_push import as_member
        return as_member(spec, wait=not submit)
    p = connect_platform()
    check_target.fn(endpoint_registry(p), spec, check_code.fn(spec, modelfolder.load), p.settings.home_dir)  # before any flow run
    return act(FLOW_SYNC_ENDPOINT, "mlyard.flows.endpoint_sync:sync_endpoint", spec, submit)


def validate(spec: EndpointSpec | StageSpec | dict | str | Path, *, echo=print, timeout: float = 300.0) -> dict[str, Any]:
    """Backend.AI's validation: start one replica of each resource of the (default) stage as a plain
    process, stream its output to `echo`, and say whether it came up healthy (Finished) or why not.
    Nothing is recorded and nothing is left running."""
    import os
    import socket
    import subprocess
    import threading

    from mlyard.tasks.endpoints import check_stage, mlyard_bin
    from mlyard.tasks.replicas import probe

    try:
        stage = _spec(EndpointSpec, spec).stage
    except SpecError:
        stage = _spec(StageSpec, spec)
    p = connect_platform()
    versions = check_stage.fn(endpoint_registry(p), p.models, stage, "stage")
    results = []
    for name, version in versions:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = [mlyard_bin(), "serve", f"models:/{name}/{version}", "--host", "127.0.0.1", "--port", str(port)]
        echo(f"$ {' '.join(argv)}")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "MLYARD_HOME": str(p.settings.home_dir)})
        lines: list[str] = []

        def pump(proc=proc, lines=lines) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip())
                echo(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started, outcome = time.monotonic(), None
        try:
            while outcome is None:
                if proc.poll() is not None:
                    outcome = {"model": f"{name}/{version}", "status": "Failed",
                               "reason": f"the replica exited with code {proc.returncode}: "
                                         + (lines[-1] if lines else "no output")}
                elif probe(f"http://127.0.0.1:{port}/v2/health/ready", 1.0) == 200:
                    outcome = {"model": f"{name}/{version}", "status": "Finished",
                               "seconds": round(time.monotonic() - started, 2)}
                elif time.monotonic() - started > timeout:
                    outcome = {"model": f"{name}/{version}", "status": "Failed",
                               "reason": f"not healthy within {timeout:.0f} s"}
                else:
                    time.sleep(0.2)
        finally:
            if proc.poll() is None:
                stop_group(proc, 15.0)
            reader.join(5)
        results.append(outcome)
    return {"status": "Finished" if all(r["status"] == "Finished" for r in results) else "Failed",
            "resources": results}


# -- reading -------------------------------------------------------------------------------------------


def gateway_call(settings, path: str, method: str = "GET", timeout: float = 10.0) -> dict[str, Any] | None:
    from mlyard.core.connection import internal_headers

    req = urllib.request.Request(gateway_url(settings) + path, method=method, data=b"" if method == "POST" else None,
                                 headers=internal_headers(settings))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def show(endpoint: str) -> dict[str, Any]:
    """An endpoint with its stages, resources, statuses, URLs, tokens, and what the gateway routes now:
    a stage the catalog holds ACTIVE but the gateway does not route shows `NOT FOUND: STAGE`."""
    from mlyard.flows.endpoint import code_kinds, urls

    settings = connect()
    p = connect_platform()
    eps = endpoint_registry(p)
    view = endpoint_in_reach(endpoint, "viewer", "reading an endpoint")
    view["urls"] = urls(gateway_url(settings), view, code_kinds(p.models, view))
    view["tokens"] = eps.tokens(endpoint)
    table = gateway_call(settings, "/mlyard/routes")
    live = (table or {}).get("endpoints", {}).get(endpoint, {})
    for st in view["stages"]:
        routed = live.get("stages", {}).get(st["name"])
        st["replicas"] = routed or []
        if table is None:
            st["gateway_status"] = "NOT FOUND: STAGE DEPLOY RESULT"
        elif st["status"] == "ACTIVE" and not routed:
            st["gateway_status"] = "NOT FOUND: STAGE"
    view["gateway"] = gateway_url(settings) if table is not None else None
    return view


def list_endpoints() -> list[dict[str, Any]]:
    """The endpoints of the caller's projects (an admin's: all)."""
    from mlyard.runs import visible_projects

    projects = visible_projects()
    return [{"name": v["name"], "project": v["project"], "status": v["status"], "default_stage": v["default_stage"],
             "public": v["public"], "stages": ", ".join(f"{s['name']}:{s['status']}" for s in v["stages"]),
             "models": ", ".join(sorted({r["model"] for s in v["stages"] for r in s["resources"]}))}
            for v in endpoint_registry().all() if projects is None or v["project"] in projects]



MAX_TOKEN_DAYS = 36500


def issue_token(endpoint: str, *, days: float | None = 30, expires_at: datetime | str | None = None,
                daily_tokens: int | None = None) -> dict[str, Any]:
    """A new token (shown once) valid for `days`, or until `expires_at`; with `daily_tokens`, the tokens of
    generative answers (in and out) it may use a day (UTC), past which the gateway answers it 429."""
    _check_budget(daily_tokens)
    if isinstance(expires_at, str):
        try:
            expires_at = datetime.fromisoformat(expires_at)
        except ValueError:
            raise SpecError("expires_at", expires_at, "an ISO-8601 time, e.g. 2027-01-31T00:00:00+00:00") from None
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=timezone.utc)
    if expires_at is None:
        if days is None or not 0 < days <= MAX_TOKEN_DAYS:  # NaN fails this too
            raise SpecError("days", days, f"a number of days above 0 and at most {MAX_TOKEN_DAYS} (100 years); "
                            "or give --expires")
        expires_at = datetime.now(timezone.utc) + timedelta(days=days)
    endpoint_in_reach(endpoint, "editor", "issuing an endpoint's token")
    token = endpoint_registry().issue_token(endpoint, expires_at, daily_tokens)
    gateway_call(connect(), "/mlyard/reload", "POST")  # valid at once, not at the gateway's next read
    return token


def _check_budget(daily_tokens: int | None) -> None:
    if daily_tokens is not None and (not isinstance(daily_tokens, int) or isinstance(daily_tokens, bool)
                                     or not 1 <= daily_tokens <= 10**12):
        raise SpecError("daily_tokens", daily_tokens, "a whole number of tokens a day from 1 to 10^12 (none: no budget)")


def set_budget(endpoint: str, who: int | str, daily_tokens: int | None) -> dict[str, Any]:
    """Set (or, with None, lift) the budget of tokens a day of a token (its id) or of a RAG whose LLM is this
    endpoint (`rag:NAME`); the gateway holds it at once."""
    _check_budget(daily_tokens)
    if not (isinstance(who, int) or str(who).isdigit() or str(who).startswith("rag:") and 4 < len(str(who)) <= 70):
        raise SpecError("token", who, "a token's id (`mlyard endpoints tokens list`) or rag:NAME")
    endpoint_in_reach(endpoint, "editor", "setting a token's budget")
    if daily_tokens and str(who).startswith("rag:"):  # a budget for a RAG the caller can see (lifting one: any)
        from mlyard.rag_checks import in_reach

        in_reach(connect(), str(who)[4:], "viewer", "budgeting a RAG's tokens")
    view = endpoint_registry().set_budget(endpoint, who, daily_tokens)
    gateway_call(connect(), "/mlyard/reload", "POST")
    return view


def tokens(endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's tokens, each with the tokens it used today (UTC) on the endpoint, by the gateway's count."""
    endpoint_in_reach(endpoint, "viewer", "listing an endpoint's tokens")
    found = endpoint_registry().tokens(endpoint)
    midnight = time.time() // 86400 * 86400
    used: dict[str, int] = {}
    for row in gateway_stats(connect(), endpoint, since=midnight).get("stats", []):
        for c in row.get("callers", []):
            used[c["caller"]] = used.get(c["caller"], 0) + c.get("tokens_in", 0) + c.get("tokens_out", 0)
    return [{**t, "used_today": used.get(f"token:{t['id']}", 0)} for t in found]


def revoke_token(endpoint: str, token_id: int) -> None:
    endpoint_in_reach(endpoint, "editor", "revoking an endpoint's token")
    endpoint_registry().revoke_token(endpoint, token_id)
    gateway_call(connect(), "/mlyard/reload", "POST")  # refused at once


def history(endpoint: str | None = None) -> list[dict[str, Any]]:
    return [h.as_dict() for h in endpoint_registry().history(endpoint)]


def stats(endpoint: str, *, since: str | float | None = "1h", until: str | float | None = None,
          stage: str | None = None, model: str | None = None, png: str | Path | None = None) -> dict[str, Any]:
    """Calls, failures, latency (mean, p50, p95, p99), predictions per class and average confidence, and
    which token or key made how many calls, per stage and model over [since, until]; with `png`, a chart
    there too. A team member reads their projects' endpoints' (through the mlyard API)."""
    if (url := member_api()) is not None:
        result = post(url, "/v1/queries/endpoints_stats", {"endpoint": endpoint, "since": since, "until": until,
                                                            "stage": stage, "model": model})
        if png is not None:
            from mlyard.serving.stats_plot import plot

            result["png"] = str(plot(result, Path(png).resolve()))
        return result
    settings = connect()
    endpoint_in_reach(endpoint, "viewer", "reading an endpoint's statistics")  # EndpointNotFound for a wrong name
    return gateway_stats(settings, endpoint, since=since, until=until, stage=stage, model=model, png=png)


def gateway_stats(settings: Any, endpoint: str, *, since: str | float | None = "1h", until: str | float | None = None,
                  stage: str | None = None, model: str | None = None, png: str | Path | None = None) -> dict[str, Any]:
    """The gateway's statistics of what it routes as `endpoint` (an endpoint, or a RAG as `rag:NAME`)."""
    from urllib.parse import urlencode

    start = when(since, "since", time.time() - 3600)
    end = when(until, "until")
    if end is not None and start is not None and end <= start:
        raise SpecError("until", until, f"a time after since ({since})")
    query = {"since": start, "endpoint": endpoint, **({"until": end} if end else {}),
             **({"stage": stage} if stage else {}), **({"model": model} if model else {})}
    result = gateway_call(settings, "/mlyard/stats?" + urlencode(query))
    if result is None:  # no gateway: what its replicas recorded in the catalog
        from mlyard.serving.endpoint_stats import EndpointStats

        result = EndpointStats(None, settings.catalog_db_url).query(start, end, endpoint, stage, model)
    if png is not None:
        from mlyard.serving.stats_plot import plot

        result["png"] = str(plot(result, Path(png).resolve()))
    return result


def logs(endpoint: str, tail: int = 20) -> list[dict[str, Any]]:
    """The last inference log records of an endpoint (the seed's fields)."""
    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.serving.inference_log import tail as last

    settings = connect()
    endpoint_registry().get(endpoint)
    if in_kubernetes_pod():  # an API pod: the stage pods print them (tasks/logpods.py)
        from mlyard.tasks.kubernetes import cluster_client
        from mlyard.tasks.logpods import endpoint_records

        return endpoint_records(cluster_client("endpoint logs", "kubernetes"), settings.kube_namespace, endpoint, tail)
    return last(settings.home_dir / "endpoints" / "logs" / f"{endpoint}.jsonl", tail)
