"""The dashboard: what the platform is used for, at a glance (`mlyard dashboard`, the page the mlyard API
serves at /dashboard, and the Prefect artifact `mlyard-dashboard`).

- **Service usage**: notebooks ACTIVE (HEALTHY), trainings and tunings COMPLETE, endpoints ACTIVE.
- **Monitoring**: the 3 endpoints with the most calls over the period, each stage's successes and
  failures (the gateway's own counts, as `mlyard endpoints stats`).
- **Resource usage**: per core type (CPU, GPU), the resources holding the most: running notebooks,
  endpoint stages' replicas and running trainings, tunings and batch inferences, by what they ask for.

Every figure is read from its engine when asked (Prefect's counts, the catalog, the gateway): nothing is
copied. The page is server-rendered HTML with SVG bars: no JavaScript.
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timezone
from typing import Any

from mlyard.core.connection import connect
from mlyard.core.settings import Settings

TOP_ENDPOINTS = 3
TOP_RESOURCES = 5


def collect(since: str | float | None = "24h", settings: Settings | None = None) -> dict[str, Any]:
    """The dashboard's figures over [since, now], of the caller's projects (every project's for an admin;
    the audit trail's latest for an admin and for a project's owner, of their projects)."""
    from mlyard.endpoints import when
    from mlyard.runs import visible_projects

    settings = settings or connect()
    start = when(since, "since", time.time() - 86400) or time.time() - 86400
    projects = visible_projects()
    endpoints = [e for e in _endpoints(settings) if projects is None or e.get("project", "default") in projects]
    running = [r for r in _running_runs() if projects is None or r["project"] in projects]
    notebooks = _notebooks(settings, projects)
    return {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "usage": {"notebooks_healthy": _healthy_notebooks(settings, notebooks), **_completed(projects),
                      "endpoints_active": sum(1 for e in endpoints if e["status"] == "ACTIVE")},
            "monitoring": _monitoring(settings, start, {e["name"] for e in endpoints} if projects is not None else None),
            "chat": _chat_endpoints(settings, endpoints),
            "resources": _resources(notebooks, endpoints, running),
            "projects": _projects(endpoints, running, projects),
            "line": _line(settings, projects),
            "audit": _recent_audit(projects)}


def _line(settings: Settings, projects: list[str] | None) -> dict[str, Any]:
    """The local pool's line (tasks/local_line.py): its places, the runs holding them and waiting, by project
    (the caller's projects')."""
    from prefect.client.orchestration import get_client

    from mlyard.prefect_setup import LOCAL_POOL
    from mlyard.tasks import local_line

    with get_client(sync_client=True) as client:
        waiting, holding = local_line.read_line(client, LOCAL_POOL)
    by: dict[str, dict[str, int]] = {}
    for kind, runs in (("holding", holding), ("waiting", waiting)):
        for run in runs:
            if projects is None or run.project in projects:
                by.setdefault(run.project, {"holding": 0, "waiting": 0})[kind] += 1
    return {"places": local_line.places(settings), "holding": len(holding), "waiting": len(waiting),
            "projects": [{"project": name, **counts} for name, counts in sorted(by.items())]}


def _recent_audit(projects: list[str] | None, n: int = 15) -> list[dict[str, Any]]:
    from mlyard.core.access import current
    from mlyard.teams import teams

    actor = current()
    if projects is None:
        return teams().audit(limit=n)
    owned = [p for p in projects if actor.role(p) == "owner"]  # the audit trail is its owners' to read
    return teams().audit(projects=owned, limit=n) if owned else []


def _endpoints(settings: Settings) -> list[dict[str, Any]]:
    from mlyard.registry.catalog import shared
    from mlyard.registry.endpoints import Endpoints

    return Endpoints(shared(settings.catalog_db_url)).all()


def _notebooks(settings: Settings, projects: list[str] | None) -> list[Any]:
    from mlyard.notebooks import notebook_store

    return notebook_store(settings).all(projects)


def _healthy_notebooks(settings: Settings, notebooks: list[Any]) -> int:
    from mlyard.notebooks import HEALTHY, notebook_status

    return sum(1 for r in notebooks if notebook_status(settings, r) == HEALTHY)


def _completed(projects: list[str] | None) -> dict[str, int]:
    """COMPLETE trainings and tunings: Prefect's count of their flows' COMPLETED runs (one query each)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from mlyard.core.names import FLOW_TRAIN, FLOW_TUNE
    from mlyard.runs import project_filter

    done = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                         tags=project_filter(projects))
    with get_client(sync_client=True) as client:
        return {f"{key}_complete": client.count_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                                          flow_run_filter=done)
                for key, flow in (("trainings", FLOW_TRAIN), ("tunings", FLOW_TUNE))}


def _running_runs() -> list[dict[str, Any]]:
    """The specs of the trainings, tunings and batch inferences running now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from mlyard.core.names import FLOW_BATCH, FLOW_TRAIN, FLOW_TUNE

    kinds = {FLOW_TRAIN: "training", FLOW_TUNE: "tuning", FLOW_BATCH: "batch inference"}
    active = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=list(kinds))))}
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(kinds))),
                                     flow_run_filter=active, limit=200)
    from mlyard.core.access import project_of_tags

    return [{"kind": kinds.get(flows.get(r.flow_id, ""), "run"), "name": (r.parameters.get("spec") or {}).get("name",
             r.name), "spec": r.parameters.get("spec") or {}, "project": project_of_tags(r.tags or ())} for r in runs]


def _projects(endpoints: list[dict[str, Any]], running: list[dict[str, Any]], projects: list[str] | None
              ) -> list[dict[str, Any]]:
    """Per project: members, quota, its runs running now and the GPUs they ask, its ACTIVE endpoints."""
    from mlyard.teams import teams

    out = []
    for p in teams().projects(projects):
        runs = [r for r in running if r["project"] == p["name"]]
        gpus = sum(int(((r["spec"].get("resources") or {}).get("gpu_count") or 0)) for r in runs)
        out.append({"project": p["name"], "members": p["members"], "gpus": p["gpus"], "max_runs": p["max_runs"],
                    "running": len(runs), "gpus_in_use": gpus,
                    "endpoints_active": sum(1 for e in endpoints if e.get("project", "default") == p["name"]
                                            and e["status"] == "ACTIVE")})
    return out


def _monitoring(settings: Settings, start: float, endpoints: set[str] | None) -> dict[str, Any]:
    from mlyard.endpoints import gateway_call

    result = gateway_call(settings, f"/mlyard/stats?since={start}")
    if result is None:  # no gateway runs: what its replicas recorded
        from mlyard.serving.endpoint_stats import EndpointStats

        result = EndpointStats(None, settings.catalog_db_url).query(start)
    per: dict[str, dict[str, Any]] = {}
    for row in result["stats"]:
        if row["endpoint"].startswith("rag:") or (endpoints is not None and row["endpoint"] not in endpoints):
            continue  # a RAG's route: its own stats (mlyard rags stats); another project's endpoint
        ep = per.setdefault(row["endpoint"], {"endpoint": row["endpoint"], "calls": 0, "failures": 0, "stages": {}})
        st = ep["stages"].setdefault(row["stage"], {"stage": row["stage"], "successes": 0, "failures": 0})
        if (t := row.get("tokens")) is not None:  # a generative model's: tokens, first token, tokens a second
            got = ep.setdefault("tokens", {"answers": 0, "in": 0, "out": 0, "ttft_sum": 0.0, "rate_sum": 0.0})
            got["answers"] += t["answers"]
            got["in"] += t["in"]
            got["out"] += t["out"]
            got["ttft_sum"] += (t["ttft_ms"]["mean"] or 0.0) * t["answers"]
            got["rate_sum"] += (t["tokens_per_second"] or 0.0) * t["out"]
        ep["calls"] += row["calls"]
        ep["failures"] += row["failures"]
        st["successes"] += row["calls"] - row["failures"]
        st["failures"] += row["failures"]
    top = sorted(per.values(), key=lambda e: (-e["calls"], e["endpoint"]))[:TOP_ENDPOINTS]
    for ep in top:
        ep["stages"] = sorted(ep["stages"].values(), key=lambda s: s["stage"])
    generative = [{"endpoint": ep["endpoint"], "answers": t["answers"], "tokens_in": t["in"], "tokens_out": t["out"],
                   "ttft_ms": round(t["ttft_sum"] / t["answers"], 1) if t["answers"] else None,
                   "tokens_per_second": round(t["rate_sum"] / t["out"], 2) if t["out"] else None}
                  for ep in sorted(per.values(), key=lambda e: e["endpoint"]) if (t := ep.pop("tokens", None))]
    return {"since": result["since"], "until": result["until"], "top_endpoints": top, "generative": generative}


def _chat_endpoints(settings: Settings, endpoints: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The ACTIVE endpoints whose default stage serves a chat model (registered with task=chat) or an inference
    engine, each with its chat page's address ("LLM Chat Test"; the page asks for the token)."""
    from mlyard.core.connection import gateway_url
    from mlyard.endpoints import connect_platform
    from mlyard.serving.chat_page import link

    gateway, models, out = gateway_url(settings), None, []
    for ep in (e for e in endpoints if e["status"] == "ACTIVE"):
        st = next((s for s in ep["stages"] if s["default"]), None)
        if st is None or not st["resources"]:
            continue
        res = st["resources"][0]
        name, version = res["model"].rsplit("/", 1)
        engine = (res.get("runtime") or {}).get("variant", "custom") != "custom"
        if not engine:
            models = models or connect_platform().models
            try:
                if models.get_version(name, version).parameters.get("task") != "chat":
                    continue
            except Exception:  # noqa: BLE001 - a version gone from the registry: no chat link, the page still shows
                continue
        base = f"{gateway}/{ep['name']}/{name}" + ("/v1" if engine else "/openai/v1")
        out.append({"endpoint": ep["name"], "model": name, "chat": link(gateway, base, name)})
    return out


def _resources(notebooks: list[Any], endpoints: list[dict[str, Any]], running: list[dict[str, Any]]) -> dict[str, Any]:
    from mlyard.core.specs.notebook import ACTIVE, INSTANCE_TYPES

    held: list[dict[str, Any]] = []
    for r in notebooks:
        if r.status == ACTIVE:
            t = INSTANCE_TYPES[r.spec["instance_type"]]
            held.append({"resource": f"notebook {r.name}", "instance_type": t.name, "cpu": float(t.cpus),
                         "gpu": t.gpus})
    for ep in endpoints:
        for st in ep["stages"]:
            if st["status"] != "ACTIVE":
                continue
            for res in st["resources"]:
                held.append({"resource": f"endpoint {ep['name']}/{st['name']} ({res['model']})",
                             "instance_type": st["instance_type"], "cpu": float(res["cpu"]) * res["pods"],
                             "gpu": int(res["gpu"]) * res["pods"]})
    for run in running:
        need = run["spec"].get("resources") or {}
        nodes = int(run["spec"].get("nodes") or 1)
        held.append({"resource": f"{run['kind']} {run['name']}", "instance_type": run["spec"].get("instance_type", "local"),
                     "cpu": float(need.get("cpu") or 1) * nodes, "gpu": int(need.get("gpu_count") or 0) * nodes})
    gpu = sorted((h for h in held if h["gpu"]), key=lambda h: (-h["gpu"], -h["cpu"], h["resource"]))
    cpu = sorted((h for h in held if not h["gpu"]), key=lambda h: (-h["cpu"], h["resource"]))
    return {"CPU": cpu[:TOP_RESOURCES], "GPU": gpu[:TOP_RESOURCES],
            "totals": {"CPU": round(sum(h["cpu"] for h in held if not h["gpu"]), 2),
                       "GPU": sum(h["gpu"] for h in held)}}


# -- the page ------------------------------------------------------------------------------------------

BAD = ' class="bad"'  # a refused or failed action, in red
_STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#f7f8fa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;min-width:160px}
.card b{display:block;font-size:26px}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #dde1e7;padding:4px 10px;text-align:left}.muted{color:#6b7280}.bad{color:#b91c1c}"""


def _bars(rows: list[tuple[str, float, float]], unit: str, width: int = 420) -> str:
    """An SVG bar per row: (label, value, second value drawn in red over it: failures), with a <title>."""
    if not rows:
        return '<p class="muted">nothing yet</p>'
    top = max(v for _, v, _ in rows) or 1
    h = 22
    parts = [f'<svg role="img" width="{width + 260}" height="{h * len(rows) + 4}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value, bad) in enumerate(rows):
        y, w = i * h + 2, max(1.0, width * value / top)
        parts.append(f'<g><title>{html.escape(label)}: {value:g} {unit}{f", {bad:g} failed" if bad else ""}</title>'
                     f'<text x="0" y="{y + 15}" font-size="12">{html.escape(label[:34])}</text>'
                     f'<rect x="230" y="{y}" width="{w:.1f}" height="{h - 6}" fill="#3b82f6"/>'
                     + (f'<rect x="230" y="{y}" width="{max(1.0, width * bad / top):.1f}" height="{h - 6}" fill="#ef4444"/>'
                        if bad else "")
                     + f'<text x="{236 + w:.1f}" y="{y + 13}" font-size="11">{value:g}</text></g>')
    return "".join(parts) + "</svg>"


def page(data: dict[str, Any], links: dict[str, str] | None = None) -> str:
    """The dashboard as one HTML page (nothing to load besides it)."""
    e = html.escape
    usage = data["usage"]
    cards = "".join(f'<div class="card">{e(label)}<b>{usage[key]}</b></div>' for key, label in (
        ("notebooks_healthy", "Notebooks ACTIVE (HEALTHY)"), ("trainings_complete", "Trainings COMPLETE"),
        ("tunings_complete", "Tunings COMPLETE"), ("endpoints_active", "Endpoints ACTIVE")))
    mon = data["monitoring"]
    top = _bars([(t["endpoint"], t["calls"], t["failures"]) for t in mon["top_endpoints"]], "calls")
    stages = "".join(f"<tr><td>{e(t['endpoint'])}</td><td>{e(s['stage'])}</td><td>{s['successes']}</td>"
                     f"<td>{s['failures']}</td></tr>" for t in mon["top_endpoints"] for s in t["stages"])
    tokens = {g["endpoint"]: g for g in mon.get("generative", [])}
    chats = {c["endpoint"]: c for c in data.get("chat", [])}
    generative = "".join(
        f"<tr><td>{e(name)}</td><td>{g.get('answers', 0)}</td><td>{g.get('tokens_in', 0)}</td>"
        f"<td>{g.get('tokens_out', 0)}</td><td>{g.get('ttft_ms') if g.get('ttft_ms') is not None else '-'}</td>"
        f"<td>{g.get('tokens_per_second') if g.get('tokens_per_second') is not None else '-'}</td><td>"
        + (f'<a class="chat" target="_blank" rel="noopener" href="{e(chats[name]["chat"])}">LLM chat test</a>'
           if name in chats else "") + "</td></tr>"
        for name, g in sorted({**{n: {} for n in chats}, **tokens}.items()))
    res = data["resources"]
    cpu = _bars([(h["resource"], h["cpu"], 0) for h in res["CPU"]], "cores")
    gpu = _bars([(h["resource"], h["gpu"], 0) for h in res["GPU"]], "GPUs")
    more = "".join(f' · <a href="{e(url)}">{e(name)}</a>' for name, url in (links or {}).items())
    projects = "".join(f"<tr><td>{e(p['project'])}</td><td>{p['members']}</td><td>{p['running']} "
                       f"({p['max_runs'] if p['max_runs'] is not None else '-'})</td><td>{p['gpus_in_use']} "
                       f"({p['gpus'] if p['gpus'] is not None else '-'})</td><td>{p['endpoints_active']}</td></tr>"
                       for p in data.get("projects", []))
    line = data.get("line") or {"places": 0, "holding": 0, "waiting": 0, "projects": []}
    lines = "".join(f"<tr><td>{e(p['project'])}</td><td>{p['holding']}</td><td>{p['waiting']}</td></tr>"
                    for p in line["projects"])
    audit = "".join(f"<tr><td>{e(str(r['at']))}</td><td>{e(r['user'])}</td><td>{e(r['project'] or '')}</td>"
                    f"<td>{e(r['action'])}</td><td>{e(r['resource'])}</td>"
                    f"<td{BAD if r['result'] != 'ok' else ''}>{e(r['result'])}</td><td>{e(r['source'])}</td></tr>"
                    for r in data.get("audit", []))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mlyard dashboard</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head><body>
<h1>mlyard dashboard</h1><p class="muted">as of {e(data['generated_at'])}{more}</p>
<h2>Service usage</h2><div class="cards">{cards}</div>
<h2>Monitoring: top {TOP_ENDPOINTS} endpoints by calls</h2>
<p class="muted">{e(mon['since'])} to {e(mon['until'])}; failures in red</p>{top}
<table><tr><th>endpoint</th><th>stage</th><th>successes</th><th>failures</th></tr>{stages}</table>
<h2>Generative endpoints</h2><p class="muted">answers, tokens in and out, mean time to first token (ms) and
tokens a second over the period; the chat page opens on the endpoint's model</p>
<table id="generative"><tr><th>endpoint</th><th>answers</th><th>tokens in</th><th>tokens out</th>
<th>first token</th><th>tokens/s</th><th>chat</th></tr>{generative}</table>
<h2>Resource usage</h2><p class="muted">what running notebooks, endpoint stages and runs ask for: CPU
{res['totals']['CPU']:g} cores, GPU {res['totals']['GPU']} in all</p>
<h3>CPU</h3>{cpu}<h3>GPU</h3>{gpu}
<h2>Projects</h2>
<table><tr><th>project</th><th>members</th><th>runs now (of at most)</th><th>GPUs asked (quota)</th>
<th>endpoints ACTIVE</th></tr>{projects}</table>
<h2>Runs on this machine</h2><p class="muted" id="line">{line['holding']} of the local pool's {line['places']} places
held, {line['waiting']} run(s) waiting in line (fair across projects; settings local_runs)</p>
<table><tr><th>project</th><th>holding places</th><th>waiting</th></tr>{lines}</table>
<h2>Audit trail: the latest changes</h2>
<table><tr><th>when</th><th>who</th><th>project</th><th>action</th><th>resource</th><th>result</th><th>from</th></tr>
{audit}</table>
</body></html>"""


def markdown(data: dict[str, Any]) -> str:
    """The dashboard as the Prefect artifact's markdown."""
    u, mon, res = data["usage"], data["monitoring"], data["resources"]
    lines = [f"# mlyard dashboard ({data['generated_at']})", "", "| notebooks ACTIVE (HEALTHY) | trainings COMPLETE | "
             "tunings COMPLETE | endpoints ACTIVE |", "|---|---|---|---|",
             f"| {u['notebooks_healthy']} | {u['trainings_complete']} | {u['tunings_complete']} | {u['endpoints_active']} |",
             "", f"## Top {TOP_ENDPOINTS} endpoints by calls ({mon['since']} to {mon['until']})", "",
             "| endpoint | stage | successes | failures |", "|---|---|---|---|"]
    lines += [f"| {t['endpoint']} | {s['stage']} | {s['successes']} | {s['failures']} |"
              for t in mon["top_endpoints"] for s in t["stages"]] or ["| (no calls) | | | |"]
    for core in ("CPU", "GPU"):
        lines += ["", f"## {core}: the resources holding the most", "", "| resource | instance type | cores | GPUs |",
                  "|---|---|---|---|"]
        lines += [f"| {h['resource']} | {h['instance_type']} | {h['cpu']:g} | {h['gpu']} |" for h in res[core]] \
            or ["| (none) | | | |"]
    return "\n".join(lines) + "\n"


def publish(data: dict[str, Any]) -> str:
    """A new version of the Prefect artifact `mlyard-dashboard` (the Prefect UI's Artifacts page shows the
    latest, with its history); its id. Made through Prefect's client: it belongs to no flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    with get_client(sync_client=True) as client:
        made = client.create_artifact(ArtifactCreate(key="mlyard-dashboard", type="markdown", data=markdown(data),
                                                     description="mlyard's dashboard (mlyard dashboard --publish)"))
    return str(made.id)
