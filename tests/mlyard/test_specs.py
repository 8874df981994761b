import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs import MAX_DATASETS, MAX_HYPERPARAMETERS, TrainingSpec, load_spec, load_spec_file
from mlyard.core.uris import parse_uri

BASE = {"name": "t1", "source_uri": "examples/sklearn_digits", "entry_point": "train.py"}


def test_valid_spec_has_defaults():
    spec = load_spec(TrainingSpec, BASE)
    assert spec.experiment == "default" and spec.nodes == 1 and spec.metric_patterns


@pytest.mark.parametrize("patch, field, words", [
    ({"name": "Bad Name"}, "name", "pattern"),
    ({"source_uri": "ftp://host/x"}, "source_uri", "unknown scheme 'ftp'"),
    ({"entry_point": "../x.py"}, "entry_point", "relative path"),
    ({"hyperparameters": {f"k{i}": i for i in range(MAX_HYPERPARAMETERS + 1)}}, "hyperparameters", "at most 100"),
    ({"datasets": {f"d{i}": "/tmp" for i in range(MAX_DATASETS + 1)}}, "datasets", "at most 10"),
    ({"datasets": {"train": "nas://bad"}}, "datasets", "nas://{nas-id}:/{path}"),
    ({"processes_per_node": 2}, "(spec)", "needs torchrun"),
    ({"nodes": 0}, "nodes", "greater than or equal to 1"),
    ({"resources": {"memory": "lots"}}, "resources.memory", "pattern"),
    ({"metric_patterns": ["(unclosed"]}, "metric_patterns", "does not compile"),
    ({"metric_patterns": [r"loss=(\d+)"]}, "metric_patterns", "name group and a value group"),
    ({"epochs": 3}, "epochs", "unknown field"),
])
def test_bad_spec_names_field_and_what_is_allowed(patch, field, words):
    with pytest.raises(SpecError) as info:
        load_spec(TrainingSpec, {**BASE, **patch})
    message = str(info.value)
    assert f"{field}:" in message and words in message


def test_missing_fields_are_all_named():
    with pytest.raises(SpecError) as info:
        load_spec(TrainingSpec, {"name": "x"})
    assert "source_uri: is required" in str(info.value) and "entry_point: is required" in str(info.value)


def test_overrides_merge_dicts_and_revalidate():
    spec = load_spec(TrainingSpec, {**BASE, "hyperparameters": {"a": 1, "b": 2}})
    copy = spec.with_overrides({"hyperparameters": {"b": 3}, "name": "t2"})
    assert copy.hyperparameters == {"a": 1, "b": 3} and copy.name == "t2"
    with pytest.raises(SpecError):
        spec.with_overrides({"name": "NO"})


def test_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="file"):
        load_spec_file(TrainingSpec, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="a YAML file that parses"):
        load_spec_file(TrainingSpec, bad)


def test_uris():
    loc = parse_uri("obs://kr1-api.example.com/container/some/path")
    assert (loc.kind, loc.endpoint, loc.bucket, loc.key) == ("s3", "kr1-api.example.com", "container", "some/path")
    loc = parse_uri("s3://bucket/a/b")
    assert (loc.bucket, loc.key, loc.endpoint) == ("bucket", "a/b", None)
    assert parse_uri("file:///data/x").path.as_posix() == "/data/x"
    assert str(parse_uri("nas://n1:/data/x", nas_mounts={"n1": "/mnt/n1"}).path) == "/mnt/n1/data/x"
    with pytest.raises(SpecError, match="MLYARD_NAS_MOUNTS"):
        parse_uri("nas://n2:/x", nas_mounts={"n1": "/mnt/n1"})
    with pytest.raises(SpecError, match="s3://bucket"):
        parse_uri("s3:///nobucket")


def test_batch_and_evaluation_specs_name_the_bad_field():
    from mlyard.core.specs import BatchInferenceSpec, EvaluationSpec, is_registry_ref

    base = {"name": "b", "model": "digits@champion", "input_uri": "s3://bucket/in", "input_format": "jsonl",
            "output_uri": "s3://bucket/out"}
    assert load_spec(BatchInferenceSpec, base).include == ["**"]
    assert is_registry_ref("digits/3") and not is_registry_ref("./models/3") and not is_registry_ref("s3://b/m/3")
    for patch, field in [({"include": []}, "include"), ({"exclude": ["/abs/*"]}, "exclude"),
                         ({"batch_size": 0}, "batch_size"), ({"model": "ftp://x"}, "model"),
                         ({"workers": 65}, "workers"), ({"input_format": "xml"}, "input_format")]:
        with pytest.raises(SpecError) as err:
            load_spec(BatchInferenceSpec, {**base, **patch})
        assert str(err.value).splitlines()[1].strip().startswith(field), err.value
    ev = {**base, "task": "regression", "label_field": "y"}
    for patch, words in [({"class_names": ["a", "b"]}, "only for task: classification"),
                         ({"task": "classification", "class_names": [str(i) for i in range(51)]}, "at most 50"),
                         ({"feature_fields": ["x", "y"]}, "label field"), ({"input_format": "json"}, "input_format")]:
        with pytest.raises(SpecError, match=words):
            load_spec(EvaluationSpec, {**ev, **patch})
    batch = load_spec(EvaluationSpec, ev).batch_spec()
    assert batch.drop_fields == ["y"] and batch.include == ["**/*.jsonl"] and not batch.output_probabilities


def test_set_merges_into_nested_fields(tmp_path):
    """`--set objective.goal=0.9` and `--set training.hyperparameters.epochs=3` change one field each."""
    import yaml

    from mlyard.api import load
    from mlyard.cli.common import parse_sets
    from mlyard.core.specs import TuningSpec

    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "strategy": "grid", "objective": {"metric": "accuracy", "direction": "maximize"},
        "parameters": [{"name": "lr", "type": "double", "values": "0.1,0.01"}],
        "training": {"name": "t", "source_uri": "algo", "entry_point": "train.py",
                     "hyperparameters": {"epochs": 8, "batch": 32}}}))
    spec = load(TuningSpec, path, parse_sets(["objective.goal=0.9", "training.hyperparameters.epochs=3"]))
    assert spec.objective.goal == 0.9 and spec.objective.direction == "maximize"
    assert spec.training.hyperparameters == {"epochs": 3, "batch": 32} and spec.training.entry_point == "train.py"


def test_relative_paths_are_resolved_against_the_submitter(tmp_path):
    from mlyard.core.specs import BatchInferenceSpec, TrainingSpec

    t = TrainingSpec(name="t", source_uri="algo", entry_point="x.py", datasets={"a": "data/a", "b": "s3://b/k"},
                     output_uri="file:///abs").resolved(tmp_path)
    assert t.source_uri == str(tmp_path / "algo") and t.datasets == {"a": str(tmp_path / "data/a"), "b": "s3://b/k"}
    assert t.output_uri == "file:///abs"
    b = BatchInferenceSpec(name="b", model="digits@champion", input_uri="in", input_format="jsonl",
                           output_uri="../out").resolved(tmp_path)
    assert b.model == "digits@champion" and b.input_uri == str(tmp_path / "in") and b.output_uri == str(tmp_path.parent / "out")


# -- the Prefect UI's Run forms (mlyard.core.specs.common.form_schema) --------------------------------------

FORMS = {"mlyard.flows.training:train": {"spec": {**BASE}},
         "mlyard.flows.tuning:tune": {"spec": {"name": "tu", "strategy": "random", "template": "t",
                                        "parameters": [{"name": "lr", "type": "double", "min": 0.01, "max": 0.1}],
                                        "objective": {"metric": "accuracy", "direction": "maximize"}}},
         "mlyard.flows.batch_inference:batch_infer": {"spec": {"name": "b", "model": "digits/1", "input_uri": "/in",
                                                        "input_format": "jsonl", "output_uri": "/out"}},
         "mlyard.flows.evaluation:evaluate": {"spec": {"name": "e", "task": "classification", "model": "digits/1",
                                                "input_uri": "/in.csv", "input_format": "csv", "label_field": "y",
                                                "output_uri": "/out"}}}


def _form(flow_path: str) -> dict:
    import importlib

    module, name = flow_path.split(":")
    return getattr(importlib.import_module(module), name).parameters.model_dump_for_openapi()


def _rendered(prop: dict, defs: dict) -> str:
    """What Prefect 3.8's Run form (prefect-ui-library's schema form) shows for a property: `anyOf` is a
    button group of its options, an object without properties and a property without a type a JSON editor."""
    if "$ref" in prop:
        prop = defs[prop["$ref"].split("/")[-1]]
    if "anyOf" in prop:
        return "choice of " + " | ".join(o.get("title") or o.get("type") or o["$ref"].split("/")[-1] for o in prop["anyOf"])
    if prop.get("type") == "object":
        return "inputs" if prop.get("properties") else "JSON editor"
    return "JSON editor" if "type" not in prop else "inputs"


@pytest.mark.parametrize("flow_path", FORMS)
def test_run_forms_show_inputs_not_json_and_prefect_still_takes_the_specs(flow_path):
    from prefect.utilities.schema_tools.validation import validate

    schema = _form(flow_path)
    defs = schema["definitions"]
    spec = defs[schema["properties"]["spec"]["$ref"].split("/")[-1]]
    shown = {}
    for model in [spec] + [defs[k] for k in defs]:
        for field, prop in model["properties"].items():
            shown[f"{model['title']}.{field}"] = _rendered(prop, defs)
            if "anyOf" in prop:  # a choice only where it means something; never a `str | None` toggle
                assert shown[f"{model['title']}.{field}"] in (
                    "choice of Key and value | JSON", "choice of List | JSON", "choice of Use template | TrainingSpec",
                    "choice of Off | EarlyStoppingSpec"), (field, prop)
                # the none choice: nothing to fill (no `type: null`, which the form shows as 'Property is
                # type "None"'), and null alone passes it
                assert all(o.get("type") != "null" for o in prop["anyOf"]), (field, prop)
            assert shown[f"{model['title']}.{field}"] != "JSON editor", f"{field} shows a JSON editor"
            assert "](" not in prop.get("pattern", ""), f"{field}'s pattern would show mangled in the UI's Markdown"
    # what the YAML, the CLI and Python send (mappings, nulls) and what the form sends (pairs) both pass
    # Prefect's own parameter check, as the server runs it on every flow run it creates
    params = FORMS[flow_path]
    assert validate(params, schema, raise_on_error=True) == []
    if flow_path == "mlyard.flows.training:train":
        as_yaml = {"spec": {**BASE, "hyperparameters": {"lr": 0.1, "opt": "adam", "fast": True}, "datasets": {"train": "/d"},
                            "tags": {"team": "vision"}, "output_uri": None, "metric_patterns": None}}
        as_form = {"spec": {**BASE, "hyperparameters": [{"key": "lr", "value": "0.1"}], "datasets": [{"key": "train",
                            "value": "/d"}], "tags": [{"key": "team", "value": "vision"}]}}
        for params in (as_yaml, as_form):
            assert validate(params, schema, raise_on_error=True) == []
        assert validate({"spec": {**BASE, "hyperparameters": [{"key": "lr"}]}}, schema), "a pair without a value"
    if flow_path == "mlyard.flows.tuning:tune":  # the none choices take null (the CLI's, the form's) and nothing else
        tune = FORMS[flow_path]["spec"]
        from mlyard.core.specs import TuningSpec

        assert validate({"spec": {**tune, "early_stopping": {}}}, schema, raise_on_error=True) == []
        assert validate({"spec": {**tune, "early_stopping": {"algorithm": "median"}}}, schema, raise_on_error=True) == []
        assert validate({"spec": {**tune, "early_stopping": "off"}}, schema), "a string is no early stopping"
        # the form's none choice reads as None, and a spec sends none (absent) as Prefect's check takes it
        spec = TuningSpec(**tune, early_stopping={})
        assert spec.early_stopping is None and spec.training is None
        dumped = spec.model_dump(mode="json")
        assert "early_stopping" not in dumped and "training" not in dumped and dumped["template"] == "t"
        assert validate({"spec": dumped}, schema, raise_on_error=True) == []
        assert TuningSpec(**dumped) == spec
        # a range's values (None) are left out as Prefect's check takes them; values pass as the form's text
        # and as the YAML's numbers
        ranged = TuningSpec(**{**tune, "parameters": [{"name": "lr", "type": "double", "min": 0.001, "max": 0.1}]})
        dumped = ranged.model_dump(mode="json")
        assert "values" not in dumped["parameters"][0] and validate({"spec": dumped}, schema, raise_on_error=True) == []
        for values in (["0.01", "0.1"], [0.01, 0.1]):
            given = {"spec": {**tune, "parameters": [{"name": "lr", "type": "double", "values": values}]}}
            assert validate(given, schema, raise_on_error=True) == []


def test_a_mapping_given_as_the_forms_pairs_is_read_as_the_mapping():
    spec = TrainingSpec(**BASE, hyperparameters=[{"key": k, "value": v} for k, v in (
        ("lr", "0.01"), ("epochs", "3"), ("opt", "adam"), ("fast", "true"), ("decay", "1e-3"), ("name", "1.2.3"))],
        datasets=[{"key": "train", "value": "s3://b/train"}], tags=[{"key": "n", "value": "3"}])
    assert spec.hyperparameters == {"lr": 0.01, "epochs": 3, "opt": "adam", "fast": True, "decay": 0.001, "name": "1.2.3"}
    assert spec.datasets == {"train": "s3://b/train"} and spec.tags == {"n": "3"}, "a text-only mapping stays text"
    assert TrainingSpec(**BASE, hyperparameters={"lr": "0.01"}).hyperparameters == {"lr": "0.01"}, "a mapping as given"
    # a run's record (its Prefect parameters) shows the mappings, a tuning's nested training too
    from mlyard.core.specs import TuningSpec
    from mlyard.core.specs.common import mappings_from_pairs

    given = {"name": "tu", "training": {**BASE, "hyperparameters": [{"key": "epochs", "value": "2"}]}, "parameters": []}
    assert mappings_from_pairs(TuningSpec, given) == {**given, "training": {**BASE, "hyperparameters": {"epochs": 2}}}
    assert mappings_from_pairs(TrainingSpec, {**BASE, "tags": [{"key": "a"}]})["tags"] == [{"key": "a"}], "as given"
    for pairs, words in (([{"key": "a", "value": "1"}, {"key": "a", "value": "2"}], "key 'a' is given twice"),
                         ([{"key": "a"}], "hyperparameters[0]: a pair is a key and a value"),
                         ([["a", 1]], "hyperparameters[0]: a pair is a key and a value")):
        with pytest.raises(SpecError) as err:
            load_spec(TrainingSpec, {**BASE, "hyperparameters": pairs})
        assert words in str(err.value) and "\n" not in str(err.value).split(":\n  ", 1)[1]


def test_the_name_pattern_reads_right_in_the_ui_and_takes_the_same_names():
    import itertools
    import re

    from mlyard.core.specs.common import NAME_PATTERN

    before = re.compile(r"^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$")  # the pattern as it was, `](` and all
    now = re.compile(NAME_PATTERN)
    names = ["".join(t) for n in range(6) for t in itertools.product("a0-A_", repeat=n)]
    names += [s for n in (48, 49, 50, 51) for s in ("a" * n, "a" + "-" * (n - 2) + "a", "-" + "a" * (n - 1), "a" * n + "\n")]
    assert [n for n in names if bool(before.match(n)) != bool(now.match(n))] == []
    assert "](" not in NAME_PATTERN
