"""Contracts of the code base itself."""

import json
import subprocess
import sys

import pytest

PURE = ["mlyard.core.settings", "mlyard.core.errors", "mlyard.core.specs", "mlyard.core.uris", "mlyard.core.connection", "mlyard.api", "mlyard.cli",
        "mlyard.queries",
        "mlyard.tasks.checks", "mlyard.trainings", "mlyard.runs", "mlyard.tasks.launch", "mlyard.tasks.evaluation", "mlyard.tasks.metrics",
        # a batch worker process starts without Prefect:
        "mlyard.tasks.inference", "mlyard.tasks.transport", "mlyard.tuning.loop", "mlyard.registry", "mlyard.tuning",
        "mlyard.schedules", "mlyard.serving"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_not_import_prefect(module):
    code = f"import sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} imports Prefect"


@pytest.mark.parametrize("flow_path, models", [
    ("mlyard.flows.training:train", ("TrainingSpec", "Resources")),
    ("mlyard.flows.tuning:tune", ("TuningSpec", "HyperparameterSpec", "MetricSpec", "ObjectiveSpec", "EarlyStoppingSpec",
                           "TrainingSpec")),
    ("mlyard.flows.batch_inference:batch_infer", ("BatchInferenceSpec", "Resources")),
    ("mlyard.flows.batch_worker:batch_worker", ("BatchJob", "BatchShard")),
    ("mlyard.flows.evaluation:evaluate", ("EvaluationSpec", "Resources")),
    ("mlyard.flows.endpoint_deploy:deploy_endpoint", ("EndpointSpec", "StageSpec", "StageResourceSpec", "NodeAutoscaler",
                                        "PodAutoscaler")),
    ("mlyard.flows.endpoint_add_stage:add_stage", ("StageChangeSpec", "StageSpec")),
    ("mlyard.flows.endpoint_promote:promote_stage", ("PromotionSpec",)),
    ("mlyard.flows.endpoint_delete:delete_endpoint", ("DeletionSpec",)),
    ("mlyard.flows.endpoint_sync:sync_endpoint", ("SyncSpec",)),
    ("mlyard.flows.pipeline_run:pipeline_run", ("PipelineRunSpec",)),
])
def test_flow_parameter_schema_documents_every_field(flow_path, models):
    import importlib

    module, name = flow_path.split(":")
    schema = getattr(importlib.import_module(module), name).parameters.model_dump()
    defs = schema["definitions"]
    assert schema["required"] == ["spec"]
    for model in models:
        for field, prop in defs[model]["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"
            assert prop != {} and "type" in prop or "anyOf" in prop or "$ref" in prop or "allOf" in prop, \
                f"{model}.{field} would render as Any"
    # Prefect's own check (the Run form, the API) refuses a number its store could not read back
    unbounded = [node for node in _nodes(schema) if node.get("type") in ("integer", "number")
                 and not (-2**63 <= node.get("minimum", node.get("exclusiveMinimum", -2**64))
                          and node.get("maximum", node.get("exclusiveMaximum", 2**64)) <= 2**63 - 1)]
    assert not unbounded, f"numbers without 64-bit bounds in {flow_path}'s schema: {unbounded}"


def _nodes(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


# -- imports run one way (DESIGN §2) ---------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
# The floors, top to bottom (DESIGN §2); a folder may import only folders on a lower floor.
FLOORS = [["mlyard"], ["flows"], ["serving"], ["tasks"], ["tuning", "registry"], ["schedules"], ["core"]]
FLOOR = {folder: depth for depth, folders in enumerate(FLOORS) for folder in folders}
PARTS = [folder for folder in FLOOR if folder != "mlyard"]  # each imports as mlyard.<folder> (mlyard/<folder> links it)


def _part(module: str) -> str | None:
    """The folder a first-party module lives in (`mlyard.tasks.launch`: tasks; `mlyard.api`: mlyard), else None."""
    names = module.split(".")
    if names[0] != "mlyard":
        return None
    return names[1] if len(names) > 1 and names[1] in PARTS else "mlyard"


def _module(rel) -> str:
    """The import name of a file of the repository (`tasks/launch.py`: mlyard.tasks.launch)."""
    names = (*rel.parts[:-1], rel.stem)
    return ".".join(names if names[0] == "mlyard" else ("mlyard", *names))


def _imports(path) -> set[str]:
    """Every module a file imports, at its top or lazily inside a function (ast.walk sees both)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file's own package
            raise AssertionError(f"{path}: relative import; write it absolute so the floors can be checked")
    return found


def _wrong_imports(root) -> list[str]:
    wrong = []
    for path in sorted(root.glob("*/**/*.py")):
        rel = path.relative_to(root)
        folder = rel.parts[0]
        if folder not in FLOOR or "migrations" in rel.parts:
            continue
        for imported in _imports(path):
            target = _part(imported)
            if imported.split(".")[0] in PARTS:  # one import name: a bare `tasks` is a user's tasks.py first
                wrong.append(f"{rel} ({folder}) imports {imported}, not mlyard.{imported}")
            elif target and target != folder and FLOOR[target] <= FLOOR[folder]:
                wrong.append(f"{rel} ({folder}) imports {imported} ({target})")
    return wrong


def test_imports_run_one_way():
    wrong = _wrong_imports(ROOT)
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


def test_the_floor_check_fails_on_an_import_that_runs_back_up(tmp_path):
    """The check itself: a lazy import from core/ up to tasks/, one between siblings, and one by a part's
    bare name, are caught."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "x.py").write_text("def f():\n    from mlyard.tasks import launch\n")
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "y.py").write_text("import mlyard.registry.models\nimport mlyard.core.errors\n"
                                              "from schedules import cron\n")
    assert sorted(_wrong_imports(tmp_path)) == ["core/x.py (core) imports mlyard.tasks (tasks)",
                                               "tuning/y.py (tuning) imports mlyard.registry.models (registry)",
                                               "tuning/y.py (tuning) imports schedules, not mlyard.schedules"]


def test_nothing_but_tests_imports_the_front_door():
    users = [f"{rel}" for rel in (p.relative_to(ROOT) for p in ROOT.glob("*/**/*.py"))
             if rel.parts[0] in FLOOR and rel.parts[0] != "mlyard"
             and any(_part(m) == "mlyard" for m in _imports(ROOT / rel))]
    assert users == []


# -- no circles inside a folder, no private names across modules ------------------------------------

def _folders(root):
    """Each folder of modules (a floor and its subfolders), as module name -> path."""
    folders: dict = {}
    for path in sorted(root.glob("*/**/*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in FLOOR and "migrations" not in rel.parts:
            folders.setdefault(_module(rel).rpartition(".")[0], {})[_module(rel)] = path
    return folders


def _circles(root) -> list[list[str]]:
    """Import circles among the modules of one folder, top-level or lazy imports alike."""
    circles = []
    for package, modules in _folders(root).items():
        edges = {m: {i for i in _imports(p) if i in modules and i != m} | {
            f"{package}.{n}" for i in _imports(p) if i == package for n in _names_from(p, package)
            if f"{package}.{n}" in modules} for m, p in modules.items()}
        circles += [c for c in _components(edges) if len(c) > 1]
    return circles


def _components(edges: dict) -> list[list[str]]:
    """The strongly connected components of a graph (Tarjan's), each sorted."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    found: list = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def _names_from(path, module: str) -> set[str]:
    import ast

    return {a.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == module for a in node.names}


def _private_imports(root) -> list[str]:
    """`from a.b import _name`, or `b._name` of a module imported as `b`: a module reaching into
    another's private names (tests aside)."""
    import ast

    wrong = []
    for modules in _folders(root).values():
        for m, path in modules.items():
            for imported in _imports(path):
                if _part(imported) and imported != m:
                    wrong += [f"{m} imports {imported}.{n}" for n in _names_from(path, imported)
                              if n.startswith("_") and not n.startswith("__")]
            tree = ast.parse(path.read_text())
            aliases = {}  # a first-party module's local name -> the module
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and _part(node.module):
                    aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
                elif isinstance(node, ast.Import):
                    aliases.update({a.asname: a.name for a in node.names if a.asname and _part(a.name)})
            wrong += sorted({f"{m} uses {aliases[node.value.id]}.{node.attr}" for node in ast.walk(tree)
                             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                             and node.value.id in aliases and aliases[node.value.id] != m
                             and node.attr.startswith("_") and not node.attr.startswith("__")})
    return wrong


def test_no_import_circle_inside_a_folder():
    circles = _circles(ROOT)
    assert not circles, "modules of one folder that import each other round a circle:\n" + \
        "\n".join(" -> ".join(c) for c in circles)


def test_no_module_imports_another_ones_private_names():
    wrong = _private_imports(ROOT)
    assert not wrong, "private names imported across modules (make them public, or move them):\n" + "\n".join(wrong)


def test_the_circle_and_private_checks_fail_on_what_they_look_for(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("from mlyard.tasks.b import _secret\n")
    (tmp_path / "tasks" / "b.py").write_text("def f():\n    from mlyard.tasks import c\n")
    (tmp_path / "tasks" / "c.py").write_text("import mlyard.tasks.a\n")
    (tmp_path / "tasks" / "d.py").write_text("import mlyard.tasks.c\nfrom mlyard.tasks import b\n\nb._hidden()\n")
    assert _circles(tmp_path) == [["mlyard.tasks.a", "mlyard.tasks.b", "mlyard.tasks.c"]]
    assert _private_imports(tmp_path) == ["mlyard.tasks.a imports mlyard.tasks.b._secret",
                                          "mlyard.tasks.d uses mlyard.tasks.b._hidden"]


# -- one error tree (core/errors.py) ----------------------------------------------------------------

def _exceptions_outside_the_tree(root) -> list[str]:
    """Classes defined outside core/errors.py whose bases name an exception (`...Error`, `Exception`,
    or a class core/errors.py defines)."""
    import ast
    import builtins

    tree_names = {n.name for n in ast.walk(ast.parse((root / "core" / "errors.py").read_text()))
                  if isinstance(n, ast.ClassDef)} if (root / "core" / "errors.py").is_file() else set()
    builtin_errors = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    found = []
    for path in sorted(root.glob("*/**/*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in FLOOR or rel.as_posix() == "core/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if bases & (builtin_errors | tree_names) or any(b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{rel}: {node.name}")
    return found


def test_every_exception_is_in_the_one_tree():
    outside = _exceptions_outside_the_tree(ROOT)
    assert not outside, "exceptions defined outside core/errors.py (move them into its tree):\n" + "\n".join(outside)


def test_the_tree_check_finds_an_exception_elsewhere(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "errors.py").write_text("class MlyardError(Exception):\n    pass\n")
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "x.py").write_text("class Gone(KeyError):\n    pass\n\n\nclass Mine(MlyardError):\n"
                                               "    pass\n\n\nclass Fine:\n    pass\n")
    assert _exceptions_outside_the_tree(tmp_path) == ["serving/x.py: Gone", "serving/x.py: Mine"]


def test_optuna_is_called_from_tuning_alone():
    """The tuning engine is Optuna behind tuning/'s functions: no other folder imports it."""
    users = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("*/**/*.py"))
             if p.relative_to(ROOT).parts[0] in FLOOR and p.relative_to(ROOT).parts[0] != "tuning"
             and any(m.split(".")[0] == "optuna" for m in _imports(p))]
    assert users == [], f"Optuna imported outside tuning/: {users}"


# -- one reader of the environment (core/settings.py) -----------------------------------------------

# Settings (the user's, with pydantic) and what a process is told about itself (standard library only: the
# `mlyard` entry point and a model server read it without importing pydantic, 0.2 s)
ENVIRONMENT_READERS = {"core/settings.py", "core/environment.py"}


def _environment_reads(root) -> list[str]:
    """`os.environ.get(...)`, `os.environ[...]` read, `os.getenv(...)` and `... in os.environ` outside the
    readers; writing the environment, or passing all of it to a child, is not reading a setting."""
    import ast

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) \
            and node.value.id == "os"

    found = []
    for path in sorted(root.glob("*/**/*.py")):
        rel = path.relative_to(root).as_posix()
        if path.relative_to(root).parts[0] not in FLOOR or rel in ENVIRONMENT_READERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            read = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and ((node.func.attr == "get" and is_environ(node.func.value))
                         or (node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
                             and node.func.value.id == "os"))) \
                or (isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load)) \
                or (isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
                    and any(is_environ(c) for c in node.comparators))
            if read:
                found.append(f"{rel}:{node.lineno}")
    return found


def test_only_settings_read_the_environment():
    reads = _environment_reads(ROOT)
    assert not reads, "environment read outside core/settings.py and core/environment.py (add a reader there):\n" + \
        "\n".join(reads)


def test_the_environment_check_finds_each_kind_of_read(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "x.py").write_text(
        "import os\na = os.environ.get('A')\nb = os.environ['B']\nc = os.getenv('C')\nd = 'D' in os.environ\n"
        "os.environ['E'] = '1'\nenv = {**os.environ}\nos.environ.setdefault('F', '1')\n")
    assert _environment_reads(tmp_path) == ["tasks/x.py:2", "tasks/x.py:3", "tasks/x.py:4", "tasks/x.py:5"]


# -- sizes that still read (DESIGN: a module a person reads in one sitting, functions that read as steps) --

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 100


def test_no_module_over_400_lines_and_no_function_over_100():
    import ast

    long_modules, long_functions = [], []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in FLOOR:
            continue
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {text.count(chr(10))} lines")
        long_functions += [f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                           for node in ast.walk(ast.parse(text))
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_modules, "modules over 400 lines (split them by what they do):\n" + "\n".join(long_modules)
    assert not long_functions, "functions over 100 lines (make them read as steps):\n" + "\n".join(long_functions)
