import pytest

from core.errors import SpecError
from core.specs import MAX_DATASETS, MAX_HYPERPARAMETERS, TrainingSpec, load_spec, load_spec_file
from core.uris import parse_uri

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
    from core.specs import BatchInferenceSpec, EvaluationSpec, is_registry_ref

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

    from core.specs import TuningSpec
    from mlyard.api import load
    from mlyard.cli.common import parse_sets

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
    from core.specs import BatchInferenceSpec, TrainingSpec

    t = TrainingSpec(name="t", source_uri="algo", entry_point="x.py", datasets={"a": "data/a", "b": "s3://b/k"},
                     output_uri="file:///abs").resolved(tmp_path)
    assert t.source_uri == str(tmp_path / "algo") and t.datasets == {"a": str(tmp_path / "data/a"), "b": "s3://b/k"}
    assert t.output_uri == "file:///abs"
    b = BatchInferenceSpec(name="b", model="digits@champion", input_uri="in", input_format="jsonl",
                           output_uri="../out").resolved(tmp_path)
    assert b.model == "digits@champion" and b.input_uri == str(tmp_path / "in") and b.output_uri == str(tmp_path.parent / "out")
