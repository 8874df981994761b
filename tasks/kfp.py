"""Kubeflow Pipelines, read with the KFP SDK: a compiled pipeline (IR YAML) is parsed into KFP's own
`PipelineSpec` message, checked, described, drawn as a graph, and prepared for `kfp.local`.

- `load(text)` — the pipeline, or a SpecError saying why not (not YAML, not a pipeline spec, a field
  KFP does not know, no name, a task naming a component, executor or task that does not exist);
- `describe(p)` — inputs (type, default), components and executors;
- `graph(p)` — every task and sub-DAG (nested pipelines, conditions, loops, exit handlers) with its
  parent DAG, and the dependency edges; `graph_text` and `graph_image` draw it;
- `check_arguments(p, args)` — run parameters against the pipeline's inputs, before anything starts;
- `local_blockers(p)` — why a component cannot run here (a container image of its own needs a
  container runtime; packages it installs are missing), and `for_local(p)` — the pipeline with the
  `pip install kfp` preamble of lightweight components removed (it needs the network; the packages
  are checked to be installed instead).

No Prefect here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlyard.core.errors import SpecError

PARAM_TYPES = {"NUMBER_DOUBLE": "float", "NUMBER_INTEGER": "int", "STRING": "str", "BOOLEAN": "bool", "LIST": "list",
               "STRUCT": "dict", "TASK_FINAL_STATUS": "task final status"}


@dataclass(frozen=True)
class Input:
    name: str
    type: str
    default: Any = None
    optional: bool = False


@dataclass
class Pipeline:
    name: str
    description: str
    spec: dict[str, Any]  # the PipelineSpec, as KFP's JSON form
    platform: dict[str, Any] | None
    text: str
    inputs: list[Input] = field(default_factory=list)


@dataclass(frozen=True)
class Node:
    id: str  # path of task names from the root: "exit-handler-1/add"
    name: str
    parent: str  # the id of the DAG it is in ("" for the root)
    kind: str  # task | importer | pipeline | condition | loop | exit-handler
    component: str
    exit_task: bool = False  # runs when the tasks it guards end, whatever their state
    display: str = ""  # the name given in the SDK (dsl.If(name=...)), when it differs


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[tuple[str, str]]  # (from id, to id): `to` waits for `from`

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": [asdict(n) for n in self.nodes], "edges": [{"from": a, "to": b} for a, b in self.edges]}

    @classmethod
    def of(cls, view: dict[str, Any]) -> "Graph":
        """The graph `as_dict` gave (the mlyard API's answer, to draw it where the caller is)."""
        names = {f.name for f in fields(Node)}
        return cls([Node(**{k: v for k, v in n.items() if k in names}) for n in view["nodes"]],
                   [(e["from"], e["to"]) for e in view["edges"]])


# -- loading and checking ----------------------------------------------------------------------

def load(text: str, source: str = "file") -> Pipeline:
    """A compiled KFP v2 pipeline from its IR YAML; a SpecError naming what is wrong otherwise."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(source, _short(text), f"YAML: {str(exc).splitlines()[0]}") from exc
    if not docs or not isinstance(docs[0], dict):
        raise SpecError(source, _short(text), "a compiled KFP pipeline (IR YAML, as kfp.compiler.Compiler writes)")
    doc = docs[0]
    if "root" not in doc or "pipelineInfo" not in doc:
        missing = [k for k in ("pipelineInfo", "root") if k not in doc]
        raise SpecError(source, _short(text), f"a KFP pipeline spec: {' and '.join(missing)} missing (a component "
                                              "or another YAML? compile a @dsl.pipeline with kfp.compiler)")
    try:
        message = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        raise SpecError(source, _short(text), f"a KFP pipeline spec: {exc}") from exc
    spec = json_format.MessageToDict(message)
    name = spec.get("pipelineInfo", {}).get("name", "")
    if not name:
        raise SpecError(f"{source}: pipelineInfo.name", "", "a pipeline name (@dsl.pipeline(name=...))")
    _check_references(spec, source)
    platform = docs[1] if len(docs) > 1 and isinstance(docs[1], dict) else None
    inputs = []
    for pname, definition in sorted(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items()):
        kind = PARAM_TYPES.get(definition.get("parameterType", ""), "any")
        default = definition.get("defaultValue")
        if kind == "int" and isinstance(default, float) and default.is_integer():
            default = int(default)  # the spec keeps numbers as doubles
        inputs.append(Input(pname, kind, default, bool(definition.get("isOptional")) or "defaultValue" in definition))
    return Pipeline(name, spec.get("pipelineInfo", {}).get("description", ""), spec, platform, text, inputs)


def _short(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:60]


def _check_references(spec: dict[str, Any], source: str) -> None:
    components = spec.get("components", {})
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for comp_name, comp in components.items():
        label = comp.get("executorLabel")
        if label and label not in executors:
            raise SpecError(f"{source}: components.{comp_name}.executorLabel", label,
                            f"an executor of deploymentSpec ({', '.join(executors) or 'none'})")
    for dag_name, dag in _dags(spec):
        tasks = dag.get("tasks", {})
        for tname, task in tasks.items():
            ref = task.get("componentRef", {}).get("name")
            if ref not in components:
                raise SpecError(f"{source}: {dag_name}.tasks.{tname}.componentRef", ref,
                                f"a component of the pipeline ({', '.join(components)})")
            for dep in task.get("dependentTasks", []):
                if dep not in tasks:
                    raise SpecError(f"{source}: {dag_name}.tasks.{tname}.dependentTasks", dep,
                                    f"a task of the same DAG ({', '.join(tasks)})")
            for kind in ("parameters", "artifacts"):
                for iname, value in task.get("inputs", {}).get(kind, {}).items():
                    out = value.get("taskOutputParameter") or value.get("taskOutputArtifact")
                    if out and out.get("producerTask") not in tasks:
                        raise SpecError(f"{source}: {dag_name}.tasks.{tname}.inputs.{kind}.{iname}",
                                        out.get("producerTask"), f"a task of the same DAG ({', '.join(tasks)})")


def _dags(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("root.dag", spec.get("root", {}).get("dag", {}))]
    for name, comp in spec.get("components", {}).items():
        if "dag" in comp:
            out.append((f"components.{name}.dag", comp["dag"]))
    return out


# -- describing and drawing --------------------------------------------------------------------

def describe(p: Pipeline) -> dict[str, Any]:
    executors = {}
    for label, ex in p.spec.get("deploymentSpec", {}).get("executors", {}).items():
        if "container" in ex:
            c = ex["container"]
            executors[label] = {"kind": "lightweight python" if _lightweight(c) else "container",
                                "image": c.get("image", ""), "packages": _packages(c)}
        else:
            executors[label] = {"kind": next(iter(ex), "?")}
    comps = {name: ("dag" if "dag" in c else c.get("executorLabel", "")) for name, c in p.spec.get("components", {}).items()}
    return {"name": p.name, "description": p.description, "inputs": [asdict(i) for i in p.inputs],
            "components": comps, "executors": executors, "sdk_version": p.spec.get("sdkVersion", ""),
            "tasks": len([n for n in graph(p).nodes if n.kind in ("task", "importer")])}


def graph(p: Pipeline) -> Graph:
    components = p.spec.get("components", {})
    nodes: list[Node] = []
    edges: list[tuple[str, str]] = []

    def walk(dag: dict[str, Any], parent: str) -> None:
        tasks = dag.get("tasks", {})
        for tname, task in tasks.items():
            ref = task.get("componentRef", {}).get("name", "")
            comp = components.get(ref, {})
            node_id = f"{parent}/{tname}" if parent else tname
            if "dag" in comp:
                if "parameterIterator" in task or "artifactIterator" in task or tname.startswith("for-loop"):
                    kind = "loop"
                elif tname.startswith("condition") or task.get("triggerPolicy", {}).get("condition"):
                    kind = "condition"
                elif tname.startswith("exit-handler"):
                    kind = "exit-handler"
                else:
                    kind = "pipeline"
            else:
                ex = p.spec.get("deploymentSpec", {}).get("executors", {}).get(comp.get("executorLabel", ""), {})
                kind = "importer" if "importer" in ex else "task"
            exit_task = task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
            shown = task.get("taskInfo", {}).get("name", tname)
            nodes.append(Node(node_id, tname, parent, kind, ref, exit_task, shown if shown != tname else ""))
            deps = set(task.get("dependentTasks", []))
            for k in ("parameters", "artifacts"):
                for value in task.get("inputs", {}).get(k, {}).values():
                    out = value.get("taskOutputParameter") or value.get("taskOutputArtifact")
                    if out and out.get("producerTask") in tasks:
                        deps.add(out["producerTask"])
            for dep in sorted(deps):
                edges.append((f"{parent}/{dep}" if parent else dep, node_id))
            if "dag" in comp:
                walk(comp["dag"], node_id)

    walk(p.spec.get("root", {}).get("dag", {}), "")
    return Graph(nodes, edges)


def _order(g: Graph, parent: str) -> list[Node]:
    """The nodes of one DAG, each after those it waits for."""
    mine = [n for n in g.nodes if n.parent == parent]
    ids = {n.id for n in mine}
    waits = {n.id: {a for a, b in g.edges if b == n.id and a in ids} for n in mine}
    done: list[Node] = []
    while len(done) < len(mine):
        ready = [n for n in mine if n not in done and waits[n.id] <= {d.id for d in done}]
        if not ready:  # a cycle cannot come from the compiler; show the rest as they are
            ready = [n for n in mine if n not in done]
        done.append(ready[0])
    return done


def graph_text(g: Graph, states: dict[str, str] | None = None) -> str:
    """The graph as an indented tree: each DAG's tasks in dependency order, `<- a, b` for what each waits for."""
    lines: list[str] = []
    names = {n.id: n.name for n in g.nodes}

    def walk(parent: str, depth: int) -> None:
        for n in _order(g, parent):
            waits = [names[a] for a, b in g.edges if b == n.id]
            kind = "" if n.kind == "task" else f" [{n.kind}]"
            kind += " [exit]" if n.exit_task else ""
            state = f"  {states.get(n.name, 'NOT STARTED')}" if states is not None and n.kind in ("task", "importer") else ""
            after = f"  <- {', '.join(waits)}" if waits else ""
            shown = f" ({n.display})" if n.display else ""
            lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{n.name}{shown}{kind}{after}{state}")
            walk(n.id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


STATE_COLORS = {"SUCCEEDED": "#7bc67b", "FAILED": "#e06666", "RUNNING": "#6fa8dc", "SKIPPED": "#cccccc",
                "NOT STARTED": "#ffffff", "CANCELLED": "#f6b26b"}
KIND_COLORS = {"task": "#ffffff", "importer": "#fff2cc", "pipeline": "#d9d2e9", "condition": "#fce5cd",
               "loop": "#d0e0e3", "exit-handler": "#f4cccc"}


def graph_image(g: Graph, path: Path, title: str, states: dict[str, str] | None = None) -> Path:
    """Draw the graph to `path` (.png or .svg): one column per DAG depth, sub-DAGs as framed groups,
    arrows for dependencies; with `states`, each task coloured by its state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    rows: list[tuple[Node, int]] = []

    def walk(parent: str, depth: int) -> None:
        for n in _order(g, parent):
            rows.append((n, depth))
            walk(n.id, depth + 1)

    walk("", 0)
    height = max(2.0, 0.55 * len(rows) + 1)
    fig, ax = plt.subplots(figsize=(9, height))
    pos = {}
    for i, (n, depth) in enumerate(rows):
        x, y = 0.4 + depth * 1.6, len(rows) - i
        pos[n.id] = (x, y)
        color = KIND_COLORS.get(n.kind, "#ffffff")
        label = n.name + ("" if n.kind == "task" else f"  [{n.kind}]")
        if states is not None and n.kind in ("task", "importer"):
            st = states.get(n.name, "NOT STARTED")
            color = STATE_COLORS.get(st, "#ffffff")
            label += f"  {st}"
        ax.add_patch(FancyBboxPatch((x, y - 0.3), 3.6, 0.6, boxstyle="round,pad=0.02", fc=color, ec="#444444"))
        ax.text(x + 0.1, y, label, va="center", fontsize=9)
    for a, b in g.edges:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        ax.annotate("", xy=(xb, yb), xytext=(xa, ya - 0.05),
                    arrowprops={"arrowstyle": "->", "color": "#555555", "connectionstyle": "arc3,rad=-0.3"})
    ax.set_xlim(0, 0.4 + (max(d for _, d in rows) if rows else 0) * 1.6 + 4.2)
    ax.set_ylim(0, len(rows) + 1)
    ax.axis("off")
    ax.set_title(title)
    path = Path(path)
    fig.savefig(path, format=path.suffix.lstrip(".") or "png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    return path


# -- run parameters ----------------------------------------------------------------------------

_CHECKS = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def check_arguments(p: Pipeline, args: dict[str, Any], field_name: str = "parameters") -> dict[str, Any]:
    """The run's arguments: each a declared input of the right type; required ones given."""
    known = {i.name: i for i in p.inputs}
    for key, value in args.items():
        if key not in known:
            raise SpecError(f"{field_name}.{key}", value, f"an input of pipeline {p.name}: "
                                                          f"{', '.join(known) or 'it takes none'}")
        want = known[key].type
        ok = _CHECKS.get(want)
        if ok and (not isinstance(value, ok) or (want in ("float", "int") and isinstance(value, bool))):
            raise SpecError(f"{field_name}.{key}", value, f"a {want}")
    for i in p.inputs:
        if not i.optional and i.name not in args:
            raise SpecError(f"{field_name}.{i.name}", None, f"a value: input {i.name} ({i.type}) has no default")
    return dict(args)


# -- running here ------------------------------------------------------------------------------

_PIP = re.compile(r"pip install[^\n]*")


def _lightweight(container: dict[str, Any]) -> bool:
    return "kfp.dsl.executor_main" in " ".join(container.get("command", []) + container.get("args", []))


def _packages(container: dict[str, Any]) -> list[str]:
    cmd = container.get("command", [])
    if len(cmd) >= 3 and cmd[:2] == ["sh", "-c"] and "pip install" in cmd[2]:
        line = _PIP.search(cmd[2])
        if line:
            return [p for p in re.findall(r"'([^']+)'", line.group(0)) if not p.startswith("-")]
    return []


def _missing(requirement: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return requirement
    if req.marker is not None and not req.marker.evaluate():
        return None
    try:
        have = version(req.name)
    except PackageNotFoundError:
        return requirement
    if req.name.lower() == "kfp":
        return None  # the installed SDK runs what any 2.x compiled
    return None if req.specifier.contains(have, prereleases=True) else f"{requirement} (installed: {have})"


def local_blockers(p: Pipeline) -> list[str]:
    """Why components of this pipeline cannot run here, one reason each (empty: all can)."""
    reasons = []
    by_label = {c.get("executorLabel"): name for name, c in p.spec.get("components", {}).items()}
    for label, ex in p.spec.get("deploymentSpec", {}).get("executors", {}).items():
        comp = by_label.get(label, label).removeprefix("comp-")
        container = ex.get("container")
        if container is None:
            continue  # importers and resolvers run in kfp.local itself
        if not _lightweight(container):
            reasons.append(f"component {comp} runs its own container image {container.get('image', '?')!r}, which "
                           "needs a container runtime (none here); run it on a Kubeflow Pipelines server "
                           "(MLYARD_KFP_HOST)")
            continue
        missing = [m for m in (_missing(r) for r in _packages(container)) if m]
        if missing:
            reasons.append(f"component {comp} installs {', '.join(missing)}, not installed here; install "
                           "them into mlyard's environment (nothing is downloaded at run time)")
    return reasons


SCHEDULE_TIME = "{{$.pipeline_job_schedule_time_utc}}"
CREATE_TIME = "{{$.pipeline_job_create_time_utc}}"


def for_local(p: Pipeline, schedule_time: str | None = None, create_time: str | None = None) -> str:
    """The pipeline's IR YAML with each lightweight component's `pip install` preamble removed, and
    KFP's time placeholders (dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC, ..._CREATE_TIME_UTC), which kfp.local
    leaves as they are, set: the slot a schedule ran it for, and when the run was created."""
    docs = [d for d in yaml.safe_load_all(p.text) if d is not None]  # as compiled: KFP's JSON form makes ints floats
    spec = docs[0]
    for ex in spec.get("deploymentSpec", {}).get("executors", {}).values():
        c = ex.get("container")
        if c and _packages(c) and c["command"][2].rstrip().endswith('"$0" "$@"'):
            c["command"] = c["command"][3:]  # `sh -c '<pip install> && "$0" "$@"' sh -ec '<run>'` -> `sh -ec '<run>'`
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if create_time:
        text = text.replace(CREATE_TIME, create_time)
    if schedule_time or create_time:
        text = text.replace(SCHEDULE_TIME, schedule_time or create_time or "")
    return text
